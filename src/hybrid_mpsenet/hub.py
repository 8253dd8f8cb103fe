"""Model cards and publishing to the Hugging Face Hub.

`build_model_card` turns a model folder and the JSON of `hybrid-mpsenet evaluate` into a `huggingface_hub.ModelCard`
with `model-index` results; `prepare_upload` writes exactly what `push_to_hub` uploads: weights, configs, the card,
and the model code, so the repository also loads with `trust_remote_code=True` where this package is missing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from huggingface_hub.utils import httpx  # the Hub client's HTTP library, whichever version it is
from safetensors.torch import load_file

from .enhancement import HybridMPSENetForSpeechEnhancement
from .evaluation import METRICS, format_table
from .onnx import GRAPH_FILE, STEP_GRAPH_FILE
from .ownership import check_replaceable_folder
from .utils import atomic_directory, weights_sha256

METRIC_NAMES = {
    "pesq": "PESQ (wide band)",
    "csig": "CSIG",
    "cbak": "CBAK",
    "covl": "COVL",
    "stoi": "STOI",
    "ssnr": "Segmental SNR (dB)",
}

CARD_BODY = """
# {model_name}

Speech enhancement (denoising) with hybrid MP-SENet: {architecture}. {parameters:,} parameters, 16 kHz.

## Use

```python
from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement  # pip install hybrid-mpsenet

model = HybridMPSENetForSpeechEnhancement.from_pretrained("{repo_id}")
clean = model.enhance(noisy, sampling_rate=rate)  # any rate, mono or multi-channel
```

Without the package: `AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)`.

## Intended use

Removing additive background noise from recorded speech. Other rates are resampled to 16 kHz and back.

## Training data

{training_data}

## Evaluation

{evaluation}

## Limitations

{limitations}

## Citations

- Y.-X. Lu, Y. Ai, Z.-H. Ling, "MP-SENet: A Speech Enhancement Model with Parallel Denoising of Magnitude and Phase
  Spectra", Interspeech 2023.
- A. Gu, T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023.
- C. Valentini-Botinhao et al., "Investigating RNN-based speech enhancement methods for noise-robust
  Text-to-Speech", SSW 2016 (VoiceBank+DEMAND).
"""


GROUP_PLACES = {"shared": "shared", "magnitude": "in the magnitude branch", "phase": "in the phase branch"}


def _architecture(model: HybridMPSENetForSpeechEnhancement) -> str:
    if not hasattr(model.config, "block_groups"):  # another member of the family (MUSE): its own description
        blocks = model.config.describe()["blocks"]
        return f"{model.config.model_type}: " + ", ".join(f"{name} {value}" for name, value in blocks.items())
    groups = [
        f"{count} {kind} block(s) {GROUP_PLACES[name]}"
        for name, (count, kind) in model.config.block_groups.items()
        if count
    ]
    return ", ".join(groups) + f", fusion {model.config.fusion}"


def build_model_card(
    model_dir: str | Path,
    repo_id: str,
    evaluation: dict | None = None,
    dataset_name: str = "VoiceBank+DEMAND",
    training_data: str = "Not stated.",
    limitations: str = "Not evaluated beyond the data above.",
    datasets: list[str] | None = None,
) -> ModelCard:
    """A model card for the model in `model_dir`.

    Args:
        evaluation: the JSON of `hybrid-mpsenet evaluate` (`{"enhanced": {metric: {"mean", "std"}}, ...}`); its
            means become `model-index` results and its table the Evaluation section.
    """
    model = HybridMPSENetForSpeechEnhancement.from_pretrained(model_dir)
    results = []
    if evaluation is not None:
        for metric in METRICS:
            value = evaluation["enhanced"][metric]["mean"]
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue  # a metric that failed on every utterance is left out, never published as NaN
            results.append(
                EvalResult(
                    task_type="audio-to-audio",
                    task_name="Speech enhancement",
                    dataset_type=dataset_name.lower().replace("+", "-").replace(" ", "-"),
                    dataset_name=dataset_name,
                    metric_type=metric,
                    metric_name=METRIC_NAMES[metric],
                    metric_value=round(value, 4),
                )
            )
    data = ModelCardData(
        library_name="hybrid-mpsenet",
        pipeline_tag="audio-to-audio",
        license="mit",
        tags=["speech-enhancement", "denoising", "mp-senet", "mamba", "audio"],
        datasets=datasets,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )
    table = (
        f"On {dataset_name} ({evaluation['num_utterances']} utterances), mean ± std:\n\n{format_table(evaluation)}"
        if evaluation is not None
        else "Not evaluated."
    )
    body = CARD_BODY.format(
        model_name=repo_id.split("/")[-1],
        architecture=_architecture(model),
        parameters=model.num_parameters(),
        repo_id=repo_id,
        training_data=training_data,
        evaluation=table,
        limitations=limitations,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def prepare_upload(model_dir: str | Path, output_dir: str | Path, card: ModelCard, overwrite: bool = False) -> Path:
    """Write the folder `push_to_hub` uploads: safetensors, config, preprocessor config, model code, README.md, and
    the ONNX graph when `model_dir` has one (see [`export_onnx`]).

    An existing `output_dir` is replaced only if it is an upload or model folder this package wrote, unchanged,
    and `overwrite` is set (see [`ownership`])."""
    check_replaceable_folder(output_dir, overwrite, "upload folder")
    model = HybridMPSENetForSpeechEnhancement.from_pretrained(model_dir)
    with atomic_directory(output_dir, "upload") as tmp:
        model.save_pretrained(tmp)  # with the preprocessor config and the code in auto_map
        for name in (GRAPH_FILE, STEP_GRAPH_FILE):
            if (Path(model_dir) / name).is_file():
                shutil.copyfile(Path(model_dir) / name, tmp / name)
        card.save(tmp / "README.md")
    return Path(output_dir)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a folder from [`prepare_upload`]; the card goes first, so the Hub never shows a generic one.

    Raises:
        PermissionError: no token, or one that may not write to `repo_id`.
        OSError: the Hub cannot be reached, or refused the upload for another reason (one line, no traceback).
    """
    folder = Path(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_file(
            path_or_fileobj=folder / "README.md", path_in_repo="README.md", repo_id=repo_id, commit_message="Model card"
        )
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, ignore_patterns=["README.md"], commit_message="Weights, configs, code"
        )
    except LocalTokenNotFoundError:
        raise PermissionError(f"Not logged in: run `hf auth login` (or set HF_TOKEN) to push to {repo_id}.") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"The Hub refused {repo_id} (HTTP {status}): run `hf auth login` (or set HF_TOKEN) with a token that "
                "can write to it."
            ) from None
        raise OSError(f"The Hub refused the upload to {repo_id}: {str(error).splitlines()[0]}") from None
    except httpx.TransportError as error:
        raise OSError(
            f"Cannot reach the Hub at {constants.ENDPOINT} ({error or type(error).__name__}); check the network."
        ) from None
    return commit.commit_url


def load_evaluation(path: str | Path | None, model_dir: str | Path) -> dict | None:
    """The JSON written by `hybrid-mpsenet evaluate --output` for the model in `model_dir`, or `None`.

    Raises:
        ValueError: not such a JSON, or one measured on other weights than `model_dir`'s (its `model_sha256`).
    """
    if path is None:
        return None
    result = json.loads(Path(path).read_text())
    if "enhanced" not in result:
        raise ValueError(f"{path}: not an evaluation result of `hybrid-mpsenet evaluate` (no 'enhanced' entry).")
    weights = weights_sha256(load_file(Path(model_dir) / "model.safetensors"))
    if result.get("model_sha256") != weights:
        measured = result.get("model_sha256") or "no model fingerprint"
        raise ValueError(
            f"{path} was not produced from the model in {model_dir} ({measured} vs {weights}); run "
            f"`hybrid-mpsenet evaluate --model {model_dir} --output ...` on it and pass that file."
        )
    return result
