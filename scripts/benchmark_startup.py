"""Start-up time of the command line and the package, and the installed size of the package and its PyTorch.

Each command runs `--repeats` times in a fresh interpreter; the table gives the median and the slowest wall time.
What a user waits for before anything happens: `hybrid-mpsenet --help`, `import hybrid_mpsenet`, the first model
class (PyTorch and transformers' model classes load here), the lean model class `HybridMPSENetEnhancer` (PyTorch and
the config only), and a whole `enhance` of the bundled example (which runs on the lean class). Prints a table and
writes JSON.

    python scripts/benchmark_startup.py --repeats 5 --output outputs/benchmark_startup.json
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hybrid_mpsenet.utils import benchmark_environment, write_json_atomic

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "audio" / "p257_418_noisy.wav"


def commands(output: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "hybrid_mpsenet.cli"]
    return {
        "hybrid-mpsenet --help": [*cli, "--help"],
        "import hybrid_mpsenet": [sys.executable, "-c", "import hybrid_mpsenet"],
        "first model class": [sys.executable, "-c", "import hybrid_mpsenet; hybrid_mpsenet.HybridMPSENetModel"],
        "lean model class": [sys.executable, "-c", "import hybrid_mpsenet; hybrid_mpsenet.HybridMPSENetEnhancer"],
        "enhance the example (2.6 s)": [*cli, "-q", "enhance", str(EXAMPLE), "-o", str(output), "--overwrite"],
    }


def folder_mib(module: str) -> float:
    """Disk size of an installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(module)
    folder = Path(spec.origin).parent
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="outputs/benchmark_startup.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    rows = []
    try:
        for name, command in commands(tmp / "enhanced.wav").items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                times.append(time.perf_counter() - start)
            rows.append({"command": name, "median_s": statistics.median(times), "max_s": max(times), "runs": times})
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp)
    sizes = {module: folder_mib(module) for module in ("hybrid_mpsenet", "torch", "transformers")}

    print(f"\n{args.repeats} runs each")
    print("| command | median s | slowest s |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['command']} | {r['median_s']:.2f} | {r['max_s']:.2f} |")
    print("\n| installed package | MiB |")
    print("|---|---|")
    for module, mib in sizes.items():
        print(f"| {module} | {mib:.0f} |")
    result = {"environment": benchmark_environment(), "startup": rows, "installed_mib": sizes}
    print(f"wrote {write_json_atomic(args.output, result)}")


if __name__ == "__main__":
    main()
