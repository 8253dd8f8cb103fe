import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from hybrid_mpsenet import HybridMPSENetFeatureExtractor, HybridMPSENetForSpeechEnhancement

pytest.importorskip("olah")
from hub_server import HubServer  # noqa: E402  (needs olah)

CLIENT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from huggingface_hub import hf_hub_download
    from transformers import AutoFeatureExtractor, AutoModel
    import hybrid_mpsenet
    from hybrid_mpsenet import HybridMPSENetEnhancer, HybridMPSENetForSpeechEnhancement

    def lean_parameters(**kwargs):
        model = HybridMPSENetEnhancer.from_pretrained("org/demo", **kwargs)
        return sum(p.numel() for p in model.parameters())

    step = sys.argv[1]
    if step == "online":
        model = HybridMPSENetForSpeechEnhancement.from_pretrained("org/demo")
        print("params", model.num_parameters())
        print("lean", lean_parameters(revision="v1"))
        print("auto", type(AutoModel.from_pretrained("org/demo")).__name__)
        print("extractor", type(AutoFeatureExtractor.from_pretrained("org/demo")).__name__)
        print("card-main", open(hf_hub_download("org/demo", "README.md")).read().strip())
        print("card-v1", open(hf_hub_download("org/demo", "README.md", revision="v1")).read().strip())
        for repo, revision in (("org/absent", "main"), ("org/demo", "no-such-branch")):
            for cls in (HybridMPSENetForSpeechEnhancement, HybridMPSENetEnhancer):
                try:
                    cls.from_pretrained(repo, revision=revision)
                except OSError as error:
                    print("error", repo, revision, str(error).splitlines()[0])
    else:
        try:
            model = HybridMPSENetForSpeechEnhancement.from_pretrained("org/demo")
            print("cached", model.num_parameters())
            print("lean-cached", lean_parameters())
        except OSError as error:
            print("error", str(error).splitlines()[0])
    """
)


def run_client(step, env):
    result = subprocess.run([sys.executable, "-c", CLIENT, step], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="olah's local mirrors are git repositories")
@pytest.mark.slow
def test_download_from_a_local_hub_revisions_cache_and_offline(tmp_path):
    repo = tmp_path / "mirrors" / "models" / "org" / "demo"
    model = HybridMPSENetForSpeechEnhancement.from_pretrained()
    model.save_pretrained(repo)
    HybridMPSENetFeatureExtractor.from_model_config(model.config).save_pretrained(repo)

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=repo, check=True)

    (repo / "README.md").write_text("first card")
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "first")
    git("tag", "v1")
    (repo / "README.md").write_text("second card")
    git("commit", "-qam", "second")

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    with HubServer(tmp_path) as server:
        out = run_client("online", {**env, "HF_ENDPOINT": server.endpoint})
    assert f"params {model.num_parameters()}" in out and f"lean {model.num_parameters()}" in out
    assert "auto HybridMPSENetModel" in out and "extractor HybridMPSENetFeatureExtractor" in out
    assert "card-main second card" in out and "card-v1 first card" in out
    absent = "error org/absent main org/absent is not a local folder and is not a valid model identifier"
    assert out.count(absent) == 2, out
    assert out.count("error org/demo no-such-branch no-such-branch is not a valid git identifier") == 2, out
    # The server is gone: with HF_HUB_OFFLINE=1, and also with the network simply unreachable, the cache serves.
    offline = run_client("offline", {**env, "HF_HUB_OFFLINE": "1"})
    assert f"cached {model.num_parameters()}" in offline and f"lean-cached {model.num_parameters()}" in offline
    unreachable = run_client("offline", {**env, "HF_ENDPOINT": server.endpoint, "HF_HUB_ETAG_TIMEOUT": "2"})
    assert f"cached {model.num_parameters()}" in unreachable
    # Nothing cached and no network: a clear error, not a hang.
    empty = run_client("offline", {**env, "HF_HOME": str(tmp_path / "empty"), "HF_ENDPOINT": server.endpoint})
    assert "error We couldn't connect to" in empty and "couldn't find them in the cached files" in empty
