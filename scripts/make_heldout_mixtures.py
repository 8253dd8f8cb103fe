"""Build a VoiceBank-layout test folder (clean_testset_wav/, noisy_testset_wav/) of reproducible mixtures.

Speech from `--clean` (speakers never used in training) is mixed at SNRs cycling through `--snrs` with either
noise files from `--noise` (random file, random offset) or, with `--noise coloured`, synthetic coloured noise
(white, pink, brown in turn), which no training set here contains. With `--reverb`, each utterance is first played
in its own simulated room (as the training augmentation does): the noisy file holds the reverberant speech plus
noise, the clean file the direct path and early reflections. Evaluate it with `hybrid-mpsenet evaluate`.

    python scripts/make_heldout_mixtures.py --clean ../shared/data/clean/vcc2016 --noise coloured \\
        --output outputs/heldout-coloured
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from hybrid_mpsenet.data import (
    coloured_noise,
    decode_audio,
    list_audio,
    loop_from_random_offset,
    mix_at_snr,
    reverberate,
    simulate_room,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", nargs="+", required=True, help="folders of held-out clean speech")
    parser.add_argument("--noise", required=True, help="a folder of noise files, or 'coloured'")
    parser.add_argument("--output", required=True)
    parser.add_argument("--per-speaker", type=int, default=2, help="utterances per speaker folder")
    parser.add_argument("--snrs", default="0,5,10,15")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reverb", action="store_true", help="play each utterance in a simulated room first")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    snrs = [float(s) for s in args.snrs.split(",")]
    files = list_audio(args.clean)
    by_speaker: dict[Path, list[Path]] = {}
    for path in files:
        by_speaker.setdefault(path.parent, []).append(path)
    chosen = [p for group in by_speaker.values() for p in group[: args.per_speaker]]
    noises = None if args.noise == "coloured" else [decode_audio(str(p), 16000) for p in list_audio(args.noise)]
    output = Path(args.output)
    for kind in ("clean_testset_wav", "noisy_testset_wav"):
        (output / kind).mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(chosen):
        clean = decode_audio(str(path), 16000)
        if noises is None:
            noise = coloured_noise(len(clean), float(index % 3), rng)
        else:
            noise = loop_from_random_offset(noises[int(rng.integers(len(noises)))], len(clean), rng)
        speech = clean
        if args.reverb:
            full, early = simulate_room(np.random.default_rng((args.seed, index)), 16000)
            speech, clean = reverberate(clean, full), reverberate(clean, early)
        noisy = mix_at_snr(speech, noise, snrs[index % len(snrs)])
        peak = max(float(np.abs(noisy).max()), 1e-9)
        scale = min(1.0, 0.99 / peak)
        name = f"{path.parent.name}_{path.stem}.wav"
        sf.write(output / "clean_testset_wav" / name, clean * scale, 16000, subtype="FLOAT")
        sf.write(output / "noisy_testset_wav" / name, noisy * scale, 16000, subtype="FLOAT")
    print(f"wrote {len(chosen)} pairs to {output}")


if __name__ == "__main__":
    main()
