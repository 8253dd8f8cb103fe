"""Parity fixtures for the MUSE port, made by the original code (huaidanquede/MUSE-Speech-Enhancement, MIT licence)
run from a checkout of that repository: its modules are imported from the checkout, never copied.

Writes, in the layout of the MP-SENet parity fixtures, `g_00000000` (`{"generator": state_dict}` with every tensor
of the given checkpoint perturbed, so that no weight keeps a released or initial value), the original `config.json`,
and `io.safetensors` with the original's inputs and outputs on real mixtures of the shared speech and noise (one of
308 frames, the original's training segment, and one of 124): `noisy_wav_N`, `norm_factor_N`, `noisy_amp_N`,
`noisy_pha_N`, `amp_g_N`, `pha_g_N`, `com_g_N`, `audio_g_N` for N in 308, 124, and the same model's outputs in
float64 (`amp_g64_N`, `pha_g64_N`): float32 rounding alone moves the original's outputs by up to about 1e-4 on such
weights, so the float64 outputs are what proves a re-implementation computes the same function.

The checkout needs the original's imports: `pip install einops joblib torchvision librosa` (torchvision for its
`deform_conv2d`).

    python scripts/make_muse_fixtures.py --original /path/to/MUSE-Speech-Enhancement \
        --checkpoint /path/to/MUSE-Speech-Enhancement/paper_result/g_best --out tests/fixtures/muse
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# (frames, clean file, noise file, SNR dB): real speech over real ambiences; frames = samples // 100 + 1.
MIXTURES = (
    (308, "clean/cmu_arctic/slt/arctic_a0001.wav", "noise/speech_commands_bg/running_tap.wav", 5.0),
    (124, "clean/cmu_arctic/aew/a0002.wav", "noise/speech_commands_bg/doing_the_dishes.wav", 0.0),
)


def mixture(clean_path: Path, noise_path: Path, samples: int, snr_db: float) -> np.ndarray:
    clean = sf.read(clean_path, dtype="float32")[0][4000 : 4000 + samples]
    noise = sf.read(noise_path, dtype="float32")[0][:samples]
    gain = np.sqrt(np.mean(clean**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return (clean + gain * noise).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=Path, required=True, help="checkout of MUSE-Speech-Enhancement")
    parser.add_argument("--checkpoint", type=Path, help="original generator to perturb (default: a fresh init)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared speech and noise")
    args = parser.parse_args()

    sys.path.insert(0, str(args.original.resolve()))
    from env import AttrDict
    from models.generator import MUSE

    config = json.loads((args.original / "paper_result" / "config.json").read_text())
    h = AttrDict(config)
    torch.manual_seed(args.seed)
    model = MUSE(h)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True)["generator"])
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
                tensor.add_(0.01 * torch.randn(tensor.shape, generator=generator))
    model.eval()
    model64 = copy.deepcopy(model).double()

    # The original's `datasets/` folder is shadowed by Hugging Face `datasets`: load its file directly.
    spec = importlib.util.spec_from_file_location("muse_dataset", args.original / "datasets" / "dataset.py")
    original_dataset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(original_dataset)
    mag_pha_stft, mag_pha_istft = original_dataset.mag_pha_stft, original_dataset.mag_pha_istft

    tensors = {}
    with torch.no_grad():
        for frames, clean, noise, snr in MIXTURES:
            samples = (frames - 1) * h.hop_size
            wav = torch.from_numpy(mixture(args.data / clean, args.data / noise, samples, snr))
            norm_factor = torch.sqrt(len(wav) / torch.sum(wav**2.0))
            amp, pha, _ = mag_pha_stft((wav * norm_factor)[None], h.n_fft, h.hop_size, h.win_size, h.compress_factor)
            amp_g, pha_g, com_g = model(amp, pha)
            audio_g = mag_pha_istft(amp_g, pha_g, h.n_fft, h.hop_size, h.win_size, h.compress_factor) / norm_factor
            assert amp.shape[-1] == frames, amp.shape
            amp_g64, pha_g64, _ = model64(amp.double(), pha.double())
            tensors[f"amp_g64_{frames}"], tensors[f"pha_g64_{frames}"] = amp_g64.contiguous(), pha_g64.contiguous()
            for name, value in {
                "noisy_wav": wav,
                "norm_factor": norm_factor,
                "noisy_amp": amp,
                "noisy_pha": pha,
                "amp_g": amp_g,
                "pha_g": pha_g,
                "com_g": com_g,
                "audio_g": audio_g,
            }.items():
                tensors[f"{name}_{frames}"] = value.contiguous().float()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": model.state_dict()}, args.out / "g_00000000")
    (args.out / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    save_file(tensors, args.out / "io.safetensors")
    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {parameters:,} parameters, inputs of {[m[0] for m in MIXTURES]} frames")


if __name__ == "__main__":
    main()
