"""Write a generated training corpus from the shared speech and noise, no new data: for data-pipeline tests and
benchmarks that show how start-up and memory scale without the DNS Challenge's hundreds of gigabytes.

`--files N --seconds S` writes N speech files of S seconds each (many short files); `--hours H --file-minutes M`
writes H hours of speech in M-minute files (few long files, as DNS has). Speech files are random crops of the
source speech, concatenated until long enough, at random gains; noise files are loops of the source noise at
random offsets and gains, `--noise-files` of `--noise-minutes` each. 16-bit WAV at 16 kHz, seeded.

    python scripts/make_synthetic_corpus.py --speech ../shared/data/clean --noise ../shared/data/noise \\
        --files 10000 --seconds 3 --output outputs/corpora/files-10k
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from hybrid_mpsenet.data import decode_audio, list_audio

RATE = 16000


def load_pool(source: str | Path, limit_seconds: float) -> list[np.ndarray]:
    """Mono recordings at 16 kHz from `source` (recursive), up to `limit_seconds` in all."""
    pool, total = [], 0.0
    for path in list_audio(source):
        audio = decode_audio(str(path), RATE)
        pool.append(audio)
        total += len(audio) / RATE
        if total >= limit_seconds:
            break
    return pool


def compose(pool: list[np.ndarray], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """`seconds` of audio: random pieces of the pool's recordings one after another, each at a random gain."""
    length, pieces, done = int(seconds * RATE), [], 0
    while done < length:
        source = pool[int(rng.integers(len(pool)))]
        start = int(rng.integers(len(source)))
        piece = source[start : start + length - done] * 10 ** (rng.uniform(-6, 6) / 20)
        pieces.append(piece)
        done += len(piece)
    audio = np.concatenate(pieces)[:length]
    return np.clip(audio, -0.99, 0.99).astype(np.float32)


def write_corpus(
    speech: str | Path,
    noise: str | Path,
    output: str | Path,
    files: int,
    seconds: float,
    noise_files: int,
    noise_seconds: float,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write `output/clean/NNNNNNN.wav` (`files` x `seconds`) and `output/noise/NNNN.wav`; returns `output`."""
    rng = np.random.default_rng(seed)
    output = Path(output)
    speech_pool, noise_pool = load_pool(speech, 1800.0), load_pool(noise, 1800.0)
    for folder, count, length, pool in (
        ("clean", files, seconds, speech_pool),
        ("noise", noise_files, noise_seconds, noise_pool),
    ):
        for index in tqdm(range(count), desc=f"writing {folder}", disable=not progress):
            path = output / folder / f"{index // 1000:04d}" / f"{index:07d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, compose(pool, length, rng), RATE, subtype="PCM_16")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech", required=True, help="folder of source speech")
    parser.add_argument("--noise", required=True, help="folder of source noise")
    parser.add_argument("--output", required=True, help="corpus folder to write (clean/ and noise/)")
    parser.add_argument("--files", type=int, help="number of speech files (with --seconds)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each speech file")
    parser.add_argument("--hours", type=float, help="hours of speech instead (with --file-minutes)")
    parser.add_argument("--file-minutes", type=float, default=5.0, help="length of each long speech file")
    parser.add_argument("--noise-files", type=int, default=20, help="number of noise files")
    parser.add_argument("--noise-minutes", type=float, default=1.0, help="length of each noise file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.files is None) == (args.hours is None):
        parser.error("give --files (many short files) or --hours (few long ones)")
    files, seconds = (args.files, args.seconds) if args.files else (
        max(1, round(args.hours * 60 / args.file_minutes)), args.file_minutes * 60
    )  # fmt: skip
    folder = write_corpus(
        args.speech, args.noise, args.output, files, seconds, args.noise_files, args.noise_minutes * 60, args.seed
    )
    print(f"wrote {folder}: {files} speech files of {seconds:g} s, {args.noise_files} noise files")


if __name__ == "__main__":
    main()
