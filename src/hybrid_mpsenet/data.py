"""Training data: VoiceBank+DEMAND pairs (local folders in two layouts, or a `datasets` dataset) and clean speech
mixed with noise on the fly, with seeded random crops.

Every source becomes a `datasets.Dataset` with columns `id`, `clean` and `noisy` (or `id` and `clean` for speech
to be mixed), whose audio cells are file paths or `{"bytes", "path"}` / `{"array", "sampling_rate"}` dicts.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import scipy.signal
import soundfile as sf
import soxr
import torch
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm

from .audio import AudioError, atomic_audio_writer, check_sampling_rate, to_float
from .utils import write_json_atomic

logger = logging.getLogger(__name__)

# Folder names of the original VoiceBank+DEMAND release (Valentini-Botinhao et al., 2016), by split.
VOICEBANK_FOLDERS = {
    "train": ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"),
    "test": ("clean_testset_wav", "noisy_testset_wav"),
}
# MP-SENet's layout: all files in two folders, the split given by a list of ids ("p226_001|...") per line.
MPSENET_FOLDERS = ("wavs_clean", "wavs_noisy")
MPSENET_LISTS = {"train": "training.txt", "test": "test.txt"}
# The plainest layout: two folders whose files are paired by name; it holds one split, whichever is asked for.
PLAIN_FOLDERS = ("clean", "noisy")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def decode_audio(value, sampling_rate: int | None) -> np.ndarray:
    """Mono float32 samples `(samples,)` at `sampling_rate` (`None`: the file's own) from a path, or a
    `{"bytes", "path"}` or `{"array", "sampling_rate"}` dict (the `datasets.Audio` cell formats); channels are
    averaged. Rates outside 4-768 kHz (header damage) are an [`AudioError`]."""
    name = value if isinstance(value, str) else "an audio cell"
    if isinstance(value, dict) and value.get("array") is not None:
        audio, rate = to_float(np.asarray(value["array"])), value["sampling_rate"]
        audio = audio.mean(axis=0) if audio.ndim == 2 else audio  # datasets arrays are (channels, samples)
    else:
        source = value
        if isinstance(value, dict):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        if isinstance(source, (str, Path)):
            if not Path(source).is_file():  # a FIFO or device would block the read
                raise AudioError(f"{source}: not a regular file.")
            source = os.fsencode(source)  # names that are not UTF-8 included
        try:
            with sf.SoundFile(source) as handle:
                audio, rate = handle.read(dtype="float32", always_2d=True), handle.samplerate
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            raise AudioError(f"{name}: not readable ({error}).") from error
        audio = audio.mean(axis=1)
    rate = check_sampling_rate(rate, f"{name}: the sampling rate")
    if sampling_rate is not None and rate != sampling_rate:
        audio = soxr.resample(audio, rate, sampling_rate, quality="VHQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def audio_header(path: str | Path) -> tuple[int, int]:
    """`(frames, sampling_rate)` of an audio file from its header alone (nothing is decoded).

    Raises:
        AudioError: not a regular file, unreadable, no samples, or a rate outside 4-768 kHz.
    """
    if not Path(path).is_file():
        raise AudioError(f"{path}: not a regular file.")
    try:
        info = sf.info(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: not readable ({error}).") from error
    if info.frames <= 0:
        raise AudioError(f"{path}: no samples.")
    return info.frames, check_sampling_rate(info.samplerate, f"{path}: the sampling rate")


def read_window(path: str | Path, start: int, length: int) -> np.ndarray:
    """Mono float32 samples `[start, start + length)` of a file, read by seeking (channels averaged): a crop costs
    its own length, not the file's."""
    try:
        audio, _ = sf.read(os.fsencode(path), frames=length, start=start, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: not readable ({error}).") from error
    return np.ascontiguousarray(audio.mean(axis=1), dtype=np.float32)


# The DNS Challenge synthesiser names a mixture `<clean>_snr<N>_..._fileid_<K>.wav` and its target
# `clean_fileid_<K>.wav`: the pair shares its `fileid_<K>`.
DNS_FILE_ID = re.compile(r"(?:^|_)(fileid_\d+)$")


def _audio_files(folder: Path) -> dict[str, Path]:
    """Audio files of `folder` by pairing key: the `fileid_<K>` of DNS-synthesised names, else the stem.

    Raises:
        ValueError: two files of the folder share a key.
    """
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        match = DNS_FILE_ID.search(path.stem)
        key = match.group(1) if match else path.stem
        if key in files:
            raise ValueError(f"{files[key]} and {path} both pair as {key!r}; keep one of them.")
        files[key] = path
    return files


def _pair_folders(clean_dir: Path, noisy_dir: Path, ids: Sequence[str] | None = None) -> datasets.Dataset:
    for folder in (clean_dir, noisy_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: folder not found.")
    clean, noisy = _audio_files(clean_dir), _audio_files(noisy_dir)
    wanted = sorted(ids) if ids is not None else sorted(set(clean) | set(noisy))
    missing = [i for i in wanted if i not in clean or i not in noisy]
    if missing:
        logger.warning(
            "%d files have no partner in %s / %s and are skipped, e.g. %s",
            len(missing),
            clean_dir,
            noisy_dir,
            missing[:5],
        )
    kept = [i for i in wanted if i in clean and i in noisy]
    if not kept:
        raise ValueError(f"No clean/noisy pairs found in {clean_dir} and {noisy_dir}.")
    return datasets.Dataset.from_dict(
        {"id": kept, "clean": [str(clean[i]) for i in kept], "noisy": [str(noisy[i]) for i in kept]}
    )


def load_voicebank(
    source: str | Path,
    split: str = "train",
    clean_column: str = "clean",
    noisy_column: str = "noisy",
) -> datasets.Dataset:
    """VoiceBank+DEMAND-style clean/noisy pairs.

    Args:
        source: a folder in the original layout (`clean_trainset_28spk_wav`, `noisy_trainset_28spk_wav`,
            `clean_testset_wav`, `noisy_testset_wav`), a folder in MP-SENet's layout (`wavs_clean`, `wavs_noisy`,
            `training.txt`, `test.txt`), a folder with `clean/` and `noisy/` whose files pair by name or, as the
            DNS Challenge synthesiser writes them, by their `fileid_<K>` (one split, returned for either), a dataset
            saved with `save_to_disk`, a folder of parquet files, or a Hub dataset id with audio columns.
        split: `train` or `test`.
        clean_column, noisy_column: audio column names for `datasets` sources.

    Returns:
        A `datasets.Dataset` with columns `id`, `clean`, `noisy`.
    """
    if split not in VOICEBANK_FOLDERS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    root = Path(source)
    if root.is_dir():
        if (root / VOICEBANK_FOLDERS[split][0]).is_dir():
            return _pair_folders(*(root / name for name in VOICEBANK_FOLDERS[split]))
        if (root / MPSENET_FOLDERS[0]).is_dir():
            listing = root / MPSENET_LISTS[split]
            if not listing.is_file():
                raise FileNotFoundError(f"{listing}: the {split} list of MP-SENet's layout is missing.")
            ids = [line.split("|")[0].strip() for line in listing.read_text().splitlines() if line.strip()]
            return _pair_folders(*(root / name for name in MPSENET_FOLDERS), ids=ids)
        if all((root / name).is_dir() for name in PLAIN_FOLDERS):
            return _pair_folders(*(root / name for name in PLAIN_FOLDERS))
        if (root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(root))
        elif any(root.rglob("*.parquet")):
            loaded = datasets.load_dataset("parquet", data_dir=str(root))
        else:
            raise ValueError(
                f"{root}: not a folder of clean/noisy pairs (expected {PLAIN_FOLDERS}, {VOICEBANK_FOLDERS[split]} "
                f"or {MPSENET_FOLDERS} + {MPSENET_LISTS[split]}), a saved dataset, or parquet files."
            )
    elif "/" in str(source) and not str(source).startswith((".", "/")):
        loaded = datasets.load_dataset(str(source))
    else:
        raise FileNotFoundError(f"{source}: no such folder (and not a Hub dataset id 'org/name').")
    return _from_datasets(loaded, split, clean_column, noisy_column)


def _from_datasets(loaded, split: str, clean_column: str, noisy_column: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"The dataset has splits {list(loaded)}; it needs a '{split}' split.")
        loaded = loaded[split]
    for column in (clean_column, noisy_column):
        if column not in loaded.column_names:
            raise ValueError(f"The dataset has columns {loaded.column_names}; expected an audio column '{column}'.")
        if isinstance(loaded.features[column], datasets.Audio):
            # Decoded here with soundfile, so no audio backend is needed by `datasets`.
            loaded = loaded.cast_column(column, datasets.Audio(decode=False))
    if len(loaded) == 0:
        raise ValueError(f"The '{split}' split is empty.")
    ids = loaded["id"] if "id" in loaded.column_names else [str(i) for i in range(len(loaded))]
    return datasets.Dataset.from_dict(
        {"id": list(ids), "clean": list(loaded[clean_column]), "noisy": list(loaded[noisy_column])}
    )


def dns_tree(root: str | Path) -> dict[str, list[Path]]:
    """The folders of a DNS Challenge tree (DNS-3 `datasets/`, DNS-4/5 `datasets_fullband/`, or their parent):
    `{"clean": [...], "noise": [...], "impulse_responses": [...]}`, each the subfolders whose names start so
    (`clean`, `clean_fullband`, ...); impulse responses may be absent.

    Raises:
        FileNotFoundError: no clean or no noise folder under `root`.
    """
    root = Path(root)
    for nested in ("datasets_fullband", "datasets"):
        if (root / nested).is_dir() and not any((root / name).is_dir() for name in ("clean", "noise")):
            root = root / nested
            break
    found: dict[str, list[Path]] = {"clean": [], "noise": [], "impulse_responses": []}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for kind in found:
                if folder.name == kind or folder.name.startswith(f"{kind}_"):
                    found[kind].append(folder)
    if not found["clean"] or not found["noise"]:
        raise FileNotFoundError(
            f"{root}: not a DNS Challenge tree (expected clean*/ and noise*/ folders, optionally impulse_responses/, "
            "directly or under datasets/ or datasets_fullband/)."
        )
    return found


def list_audio(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """All audio files of one or more sources, in order: folders (recursive, sorted), audio files named directly,
    and file lists ([`read_file_list`]); an error if there are none."""
    return list_weighted_audio(sources)[0]


def check_source_weights(weights: Sequence[float], sources: int) -> None:
    """Refuse source weights that are not one finite value >= 0 per source with a positive sum.

    Raises:
        ValueError: naming what was given.
    """
    if len(weights) != sources:
        raise ValueError(f"Got {len(weights)} weights for {sources} sources; give one weight per source.")
    if any(not np.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"Source weights must be finite, >= 0 and not all 0, got {list(weights)}.")


def list_weighted_audio(
    sources: str | Path | Sequence[str | Path], weights: Sequence[float] | None = None
) -> tuple[list[Path], np.ndarray | None]:
    """The files of [`list_audio`] and the probability of drawing each, or `None` for an even pass over them.

    Without `weights` each file counts once, or as often as its file list's weight column says. With `weights`
    (one per source) each source gets that share of the draws, spread over its files by their list weights.

    Raises:
        ValueError: no audio files, bad weights, or list entries that are missing or not audio.
        FileNotFoundError: a source that does not exist.
    """
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if weights is not None:
        check_source_weights(weights, len(sources))
    files: list[Path] = []
    masses: list[np.ndarray] = []
    for number, source in enumerate(map(Path, sources)):
        found, line_weights = _source_files(source)
        files += found
        line_weights = np.asarray(line_weights, dtype=np.float64)
        if weights is not None:
            line_weights = weights[number] * line_weights / max(line_weights.sum(), 1e-300)
        masses.append(line_weights)
    if not files:
        raise ValueError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {[str(s) for s in sources]}.")
    mass = np.concatenate(masses)
    if weights is None and np.all(mass == mass[0]):
        return files, None
    return files, mass / mass.sum()


# File lists: one path per line, optionally followed by a weight or a duration (used as a weight); Kaldi `wav.scp`:
# `utterance-id path` per line.
LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")


def _source_files(source: Path) -> tuple[list[Path], list[float]]:
    if source.is_file() and source.suffix.lower() in AUDIO_EXTENSIONS:
        return [source], [1.0]
    if source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        return read_file_list(source)
    if source.exists() and not source.is_dir():
        raise ValueError(
            f"{source}: not a folder, a regular audio file ({', '.join(AUDIO_EXTENSIONS)}) or a file list "
            f"({', '.join(LIST_SUFFIXES)})."
        )
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder or audio file.")
    # Regular files only: a FIFO or device named like audio would block the start-up check.
    found = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    return found, [1.0] * len(found)


def read_file_list(path: str | Path) -> tuple[list[Path], list[float]]:
    """The files and weights of a file list: `path [weight]` per line (a duration works as a weight), or Kaldi's
    `wav.scp` (`.scp`: `utterance-id path`). Relative paths are relative to the list's folder; blank lines and
    lines starting with `#` are skipped.

    Raises:
        ValueError: naming the list's line of every missing, non-regular or non-audio entry, bad weight, or piped
            `wav.scp` command.
    """
    path = Path(path)
    kaldi = path.suffix.lower() == ".scp"
    files, weights, problems = [], [], []
    for number, line in enumerate(path.read_text(errors="surrogateescape").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        weight = 1.0
        if kaldi:
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                problems.append(f"line {number}: expected 'utterance-id path'")
                continue
            entry = parts[1]
            if entry.endswith("|"):
                problems.append(f"line {number}: a piped command; extract the audio to files first")
                continue
        else:
            entry, last = (line.rsplit(None, 1) + [""])[:2] if " " in line or "\t" in line else (line, "")
            try:
                weight = float(last) if last else 1.0
            except ValueError:
                entry, weight = line, 1.0  # a name with spaces, no weight
            if not np.isfinite(weight) or weight < 0:
                problems.append(f"line {number}: weight {last!r} is not a number >= 0")
                continue
        audio = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if audio.suffix.lower() not in AUDIO_EXTENSIONS:
            problems.append(f"line {number}: {entry} is not a {'/'.join(AUDIO_EXTENSIONS)} file")
        elif not audio.is_file():
            problems.append(f"line {number}: {entry} is missing or not a regular file")
        else:
            files.append(audio)
            weights.append(weight)
    if problems:
        listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"{path}: {len(problems)} unusable entr{'y' if len(problems) == 1 else 'ies'}:\n  {listed}")
    return files, weights


def check_audio_files(
    paths: Sequence[str | Path],
    role: str,
    progress: bool = True,
    full: bool = True,
    cache: str | Path | None = None,
) -> dict[str, tuple[int, int]]:
    """Check every file before training starts, so that a bad one stops the run at step 0, named, instead of when
    it is first drawn (and again after each resume).

    With `full`, every file is decoded: unreadable, empty, non-finite and silent files are found. Otherwise only
    the headers are read (in parallel threads): unreadable files, files without samples and impossible rates are
    found, in a time that does not grow with the hours of audio. Headers are remembered in `cache` (a JSON file,
    keyed by path, size and modification time), so a resumed run reads none again.

    Returns:
        `{path: (frames, sampling_rate)}` for every file.

    Raises:
        ValueError: listing each bad file, or saying that every file is silent.
    """
    known = _read_header_cache(cache)
    headers: dict[str, tuple[int, int]] = {}
    bad, silent, todo = [], [], []
    for path in map(str, paths):
        entry = known.get(path)
        if not full and entry is not None and entry[:2] == _stamp(path):
            headers[path] = (entry[2], entry[3])
        else:
            todo.append(path)

    def check(path: str) -> tuple[str, tuple[int, int] | None, str | None, bool]:
        try:
            if not full:
                return path, audio_header(path), None, False
            frames, rate = audio_header(path)
            audio = decode_audio(path, None)
        except AudioError as error:
            return path, None, str(error), False
        if not np.isfinite(audio).all():
            return path, None, f"{path}: NaN or Inf samples", False
        return path, (frames, rate), None, not audio.any()

    with ThreadPoolExecutor(max_workers=1 if full else HEADER_THREADS) as pool:
        results = pool.map(check, todo)
        for path, header, error, is_silent in tqdm(results, total=len(todo), desc=f"checking {role}",
                                                   unit="file", disable=not progress):  # fmt: skip
            if error is not None:
                bad.append(error)
                continue
            headers[path] = header
            if is_silent:
                silent.append(path)
    if bad:
        listed = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ValueError(f"{len(bad)} {role} file(s) cannot be used; fix or remove them:\n  {listed}")
    if silent and len(silent) == len(paths):
        raise ValueError(f"Every {role} file is silent ({len(paths)} files, e.g. {silent[0]}); nothing to learn from.")
    if silent:
        logger.warning("%d %s file(s) are silent and add nothing, e.g. %s", len(silent), role, silent[:3])
    if cache is not None and todo:
        write_json_atomic(cache, {**known, **{p: [*_stamp(p), *headers[p]] for p in todo}}, indent=None)
    return headers


# Threads reading headers at start-up: the work is waiting on the disk, so more threads than cores pay off.
HEADER_THREADS = 8


def _stamp(path: str) -> list[int]:
    """Size and modification time of `path`: a cached header is reused only while both are unchanged."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _read_header_cache(cache: str | Path | None) -> dict[str, list[int]]:
    if cache is None:
        return {}
    try:
        entries = json.loads(Path(cache).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {key: value for key, value in entries.items() if isinstance(value, list) and len(value) == 4}


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`clean + g * noise` with `g` such that `10 log10(P_clean / P_{g noise}) = snr_db`; both `(samples,)`."""
    clean_power = float(np.mean(np.square(clean, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if noise_power == 0.0 or clean_power == 0.0:
        return clean + noise
    gain = np.sqrt(clean_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (clean + gain * noise).astype(np.float32)


def random_crop(audio: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random `length`-sample window along the first axis of `audio`; shorter audio is zero-padded at the end."""
    if audio.shape[0] >= length:
        start = int(rng.integers(0, audio.shape[0] - length + 1))
        return audio[start : start + length]
    return np.pad(audio, [(0, length - audio.shape[0])] + [(0, 0)] * (audio.ndim - 1))


def loop_from_random_offset(audio: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """`length` samples of `audio` `(samples,)` read from a random offset, wrapping around as often as needed."""
    start = int(rng.integers(len(audio)))
    return np.resize(np.roll(audio, -start), length)


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS, `(length,)`."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequencies = np.maximum(np.fft.rfftfreq(length), 1.0 / length)
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2), length)
    return (noise / max(np.sqrt(np.mean(noise**2)), 1e-12)).astype(np.float32)


# Talkers summed for speech-shaped noise: enough that no single voice stands out of the long-term spectrum.
SPEECH_SHAPED_TALKERS = 8


def speech_shaped_noise(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stationary noise with the magnitude spectrum of `speech` `(samples,)` (the sum of several talkers): its
    phases are drawn at random, which keeps the spectrum and removes every word and rhythm. Unit RMS."""
    spectrum = np.abs(np.fft.rfft(speech)) * np.exp(2j * np.pi * rng.uniform(size=len(speech) // 2 + 1))
    noise = np.fft.irfft(spectrum, len(speech))
    return (noise / max(np.sqrt(np.mean(noise**2)), 1e-12)).astype(np.float32)


def random_equaliser(audio: np.ndarray, rng: np.random.Generator, max_db: float = 9.0) -> np.ndarray:
    """`audio` through a random smooth EQ: gains uniform in +-`max_db` at 6 log-spaced frequencies, interpolated."""
    spectrum = np.fft.rfft(audio)
    position = np.log2(np.maximum(np.fft.rfftfreq(len(audio)), 1e-4))  # octaves below Nyquist-ish
    anchors = np.linspace(position.min(), position.max(), 6)
    gains_db = np.interp(position, anchors, rng.uniform(-max_db, max_db, size=6))
    return np.fft.irfft(spectrum * 10 ** (gains_db / 20), len(audio)).astype(np.float32)


# The dereverberation target keeps the direct path and this much of the reflections after it.
EARLY_REFLECTIONS_SECONDS = 0.05


def simulate_room(
    rng: np.random.Generator,
    sampling_rate: int,
    rt60_range: tuple[float, float] = (0.2, 0.8),
    max_order: int = 30,
    early_seconds: float = EARLY_REFLECTIONS_SECONDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Impulse responses of a random shoebox room (pyroomacoustics' image-source model, deterministic given `rng`).

    The room is 3-10 m x 3-8 m x 2.4-4 m with wall absorption set by Sabine's formula for a random RT60 in
    `rt60_range`; talker and microphone are at least 0.5 m from every wall. Reflections are capped at `max_order`
    (a room costs well under a second), which shortens the tail of small, live rooms.

    Returns:
        `(full, early)`, float32 `(taps,)` each, scaled so the direct path peaks at 1: the whole response, and the
        direct path plus the first `early_seconds` of reflections, the usual dereverberation target.
    """
    try:
        import pyroomacoustics as pra
    except ImportError as error:
        raise ImportError("Room simulation needs pyroomacoustics: pip install 'hybrid-mpsenet[train]'.") from error
    size = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
    absorption, order = pra.inverse_sabine(float(rng.uniform(*rt60_range)), size)
    room = pra.ShoeBox(size, fs=sampling_rate, materials=pra.Material(absorption), max_order=min(order, max_order))
    room.add_source(rng.uniform(0.5, size - 0.5))
    room.add_microphone(rng.uniform(0.5, size - 0.5))
    room.compute_rir()
    return _full_and_early(np.asarray(room.rir[0][0], dtype=np.float32), sampling_rate, early_seconds)


def _full_and_early(
    response: np.ndarray, sampling_rate: int, early_seconds: float = EARLY_REFLECTIONS_SECONDS
) -> tuple[np.ndarray, np.ndarray]:
    """An impulse response `(taps,)` scaled so that its direct path (the largest tap) has magnitude 1, and its first
    part: the direct path plus `early_seconds` of reflections, the dereverberation target."""
    direct = int(np.argmax(np.abs(response)))
    response = response / abs(response[direct])
    return response, response[: direct + int(early_seconds * sampling_rate)].copy()


def reverberate(audio: np.ndarray, impulse_response: np.ndarray) -> np.ndarray:
    """`audio` `(samples,)` convolved with `impulse_response`, cut to the input length."""
    return scipy.signal.fftconvolve(audio, impulse_response)[: len(audio)].astype(np.float32)


def normalise_pair(clean: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale a pair `(samples,)` by `sqrt(N / sum(noisy^2))`, the noisy signal's inverse RMS (MP-SENet's training
    input); a silent noisy signal is left as it is."""
    energy = float(np.square(noisy, dtype=np.float64).sum())
    if energy == 0.0:
        return clean, noisy
    factor = np.float32(np.sqrt(len(noisy) / energy))
    return clean * factor, noisy * factor


class _SeededDataset(torch.utils.data.Dataset):
    """Items draw their randomness from `(seed, epoch, index)`, so an epoch replays exactly after a resume.
    With `normalise`, each pair is scaled by [`normalise_pair`] on the whole noisy signal, before any crop."""

    def __init__(self, sampling_rate: int, segment_samples: int | None, seed: int, normalise: bool = False):
        self.sampling_rate, self.segment_samples, self.seed = sampling_rate, segment_samples, seed
        self.normalise = normalise
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))


class PairedSpeechDataset(_SeededDataset):
    """Clean/noisy pairs from [`load_voicebank`]: random aligned crops of `segment_samples` (training; shorter
    utterances are zero-padded) or whole utterances (`segment_samples=None`, validation). Items are
    `{"clean": (samples,), "noisy": (samples,)}`; with `normalise`, scaled by the whole noisy utterance's RMS
    before cropping, as MP-SENet's dataset does."""

    def __init__(
        self,
        pairs: datasets.Dataset,
        sampling_rate: int,
        segment_samples: int | None = None,
        seed: int = 0,
        normalise: bool = False,
    ):
        super().__init__(sampling_rate, segment_samples, seed, normalise)
        if len(pairs) == 0:
            raise ValueError("The dataset of clean/noisy pairs is empty.")
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.pairs[index]
        clean = decode_audio(row["clean"], self.sampling_rate)
        noisy = decode_audio(row["noisy"], self.sampling_rate)
        length = min(len(clean), len(noisy))  # the two recordings of a pair can differ by a few samples
        clean, noisy = clean[:length], noisy[:length]
        if self.normalise:
            clean, noisy = normalise_pair(clean, noisy)
        if self.segment_samples is not None:
            cropped = random_crop(np.stack([clean, noisy], axis=-1), self.segment_samples, self._rng(index))
            clean, noisy = cropped[:, 0], cropped[:, 1]
        return {"clean": torch.from_numpy(clean.copy()), "noisy": torch.from_numpy(noisy.copy())}


class NoiseMixer:
    """Noise, rooms and levels for crops of clean speech: what [`NoiseMixingDataset`] and
    [`StreamingMixingDataset`] share.

    [`mix`] takes a clean crop `(samples,)` and draws, from the item's generator: a noise file (evenly or by
    `noise_probabilities`) at a random offset (looped when shorter), a random SNR in `snr_range` dB and a random
    overall gain in `gain_range` dB. Augmentations, each with its own probability (0 by default):
    `coloured_noise_prob` replaces the noise with white/pink/brown-like noise (random exponent in [0, 2]),
    `babble_prob` with the sum of 3-6 other talkers, `speech_shaped_prob` with noise shaped like the spectrum of
    8 other talkers ([`speech_shaped_noise`]), and `eq_prob` passes the noise through a random +-9 dB equaliser.
    `reverb_prob` plays the speech in one of `ROOMS` simulated rooms ([`simulate_room`], built once per seed) or,
    drawn alike, one of the measured impulse responses `rir_files`: the input is the reverberant speech plus noise
    (the SNR is that of the reverberant speech), the target the speech with early reflections only.
    With `normalise`, each mixture and its target are scaled by the mixture's inverse RMS ([`normalise_pair`]).
    Noise is read by windows ([`loop`]), never held in memory. With `skip_unreadable` (files not checked before
    training), an item that meets a file it cannot read is drawn again ([`redrawing`]).
    """

    ROOMS = 24
    # Draws of one item that may meet unreadable files before the last error is raised.
    REDRAWS = 16

    def __init__(
        self,
        noise_files: Sequence[str | Path],
        sampling_rate: int,
        snr_range: tuple[float, float] = (-5.0, 20.0),
        gain_range: tuple[float, float] = (-12.0, 6.0),
        seed: int = 0,
        coloured_noise_prob: float = 0.0,
        babble_prob: float = 0.0,
        eq_prob: float = 0.0,
        reverb_prob: float = 0.0,
        normalise: bool = False,
        headers: dict[str, tuple[int, int]] | None = None,
        noise_probabilities: Sequence[float] | None = None,
        rir_files: Sequence[str | Path] = (),
        skip_unreadable: bool = False,
        speech_shaped_prob: float = 0.0,
    ):
        for name, value in (
            ("coloured_noise_prob", coloured_noise_prob),
            ("babble_prob", babble_prob),
            ("speech_shaped_prob", speech_shaped_prob),
            ("eq_prob", eq_prob),
            ("reverb_prob", reverb_prob),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}.")
        if not noise_files:
            raise ValueError("Mixing needs at least one noise file.")
        if snr_range[0] > snr_range[1] or gain_range[0] > gain_range[1]:
            raise ValueError(f"Ranges must be (low, high), got snr_range={snr_range} and gain_range={gain_range}.")
        self.sampling_rate, self.seed, self.normalise = sampling_rate, seed, normalise
        self.coloured_noise_prob, self.babble_prob, self.eq_prob = coloured_noise_prob, babble_prob, eq_prob
        self.reverb_prob, self.speech_shaped_prob = reverb_prob, speech_shaped_prob
        self._rooms: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.rir_files = [str(f) for f in rir_files]
        self.noise_files = [str(f) for f in noise_files]
        self.snr_range, self.gain_range = snr_range, gain_range
        self.headers = headers if headers is not None else {}
        self._noise_cdf = _cumulative(noise_probabilities, len(self.noise_files), "noise_probabilities")
        self.skip_unreadable = skip_unreadable
        self.unreadable: set[str] = set()

    def redrawing(self, draw: Callable[[int], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """`draw(attempt)` for attempt 0, 1, ...: with `skip_unreadable`, an [`AudioError`] (a file that cannot be
        read) is named in a warning, once per file and process, and the item is drawn again from other random
        numbers, up to `REDRAWS` times; without, it is raised."""
        for attempt in range(self.REDRAWS):
            try:
                return draw(attempt)
            except AudioError as error:
                if not self.skip_unreadable:
                    raise
                self.skipping(str(error))
        return draw(self.REDRAWS)  # the last chance: its error is raised

    def skipping(self, message: str) -> None:
        """Name something unreadable that is skipped in a warning, once per process."""
        if message not in self.unreadable:
            self.unreadable.add(message)
            logger.warning("skipping a file that cannot be read: %s", message)

    def header(self, path: str) -> tuple[int, int]:
        """`(frames, sampling_rate)` of a file, read once and remembered."""
        if path not in self.headers:
            self.headers[path] = audio_header(path)
        return self.headers[path]

    def loop(self, path: str, length: int, rng: np.random.Generator) -> np.ndarray:
        """[`loop_from_random_offset`] of the file, reading only the window (at most two reads) when the file is
        at the model rate and longer than the window: noise recordings of any length cost the window alone."""
        frames, rate = self.header(path)
        if rate != self.sampling_rate or frames <= length:
            return loop_from_random_offset(decode_audio(path, self.sampling_rate), length, rng)
        start = int(rng.integers(frames))
        window = read_window(path, start, min(length, frames - start))
        if len(window) < length:
            window = np.concatenate([window, read_window(path, 0, length - len(window))])
        return window

    def mix(
        self, clean: np.ndarray, rng: np.random.Generator, babble: Callable[[int, int], np.ndarray | None]
    ) -> dict[str, torch.Tensor]:
        """`{"clean", "noisy"}` `(samples,)` tensors from a clean crop `(samples,)`. `babble(talkers, samples)`
        returns the sum of that many other talkers (drawing from `rng`), or `None` when there are none yet."""
        if self._noise_cdf is None:
            noise_file = self.noise_files[int(rng.integers(len(self.noise_files)))]
        else:
            noise_file = self.noise_files[int(np.searchsorted(self._noise_cdf, rng.uniform(), side="right"))]
        noise = self.loop(noise_file, clean.shape[0], rng)
        noise = self._augment(noise, rng, babble)
        speech = clean
        if self.reverb_prob and rng.uniform() < self.reverb_prob:
            # The simulated rooms and the measured responses are drawn alike.
            room = int(rng.integers(self.ROOMS + len(self.rir_files)))
            full, early = self._room(room) if room < self.ROOMS else self._measured(self.rir_files[room - self.ROOMS])
            speech, clean = reverberate(clean, full), reverberate(clean, early)
        noisy = mix_at_snr(speech, noise, float(rng.uniform(*self.snr_range)))
        gain = np.float32(10.0 ** (rng.uniform(*self.gain_range) / 20.0))
        peak = max(float(np.abs(noisy).max()), float(np.abs(clean).max()), 1e-9)
        gain = min(gain, np.float32(0.99 / peak))  # never clip the mixture
        clean, noisy = clean * gain, noisy * gain
        if self.normalise:
            clean, noisy = normalise_pair(clean, noisy)
        return {"clean": torch.from_numpy(clean), "noisy": torch.from_numpy(noisy)}

    def _room(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        # Seeded by (seed, room) - a different stream from the items' (seed, epoch, index).
        if number not in self._rooms:
            self._rooms[number] = simulate_room(np.random.default_rng((self.seed, number)), self.sampling_rate)
        return self._rooms[number]

    def _measured(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """A measured impulse response as [`simulate_room`] returns a simulated one (read per draw, not cached:
        a corpus of thousands costs no memory)."""
        response = decode_audio(path, self.sampling_rate)
        if not np.isfinite(response).all() or not response.any():
            raise AudioError(f"{path}: not an impulse response (silent, NaN or Inf).")
        return _full_and_early(response, self.sampling_rate)

    def _augment(
        self, noise: np.ndarray, rng: np.random.Generator, babble: Callable[[int, int], np.ndarray | None]
    ) -> np.ndarray:
        if not (self.coloured_noise_prob or self.babble_prob or self.eq_prob or self.speech_shaped_prob):
            return noise  # no draws: the item stream is the same as without augmentation support
        draws = rng.uniform(size=3)
        if draws[0] < self.coloured_noise_prob:
            noise = coloured_noise(len(noise), float(rng.uniform(0.0, 2.0)), rng)
        elif draws[1] < self.babble_prob:
            talkers = babble(int(rng.integers(3, 7)), len(noise))
            noise = noise if talkers is None else talkers
        # Drawn only when asked for, so that runs without it keep their item streams.
        elif self.speech_shaped_prob and rng.uniform() < self.speech_shaped_prob:
            talkers = babble(SPEECH_SHAPED_TALKERS, len(noise))
            noise = noise if talkers is None else speech_shaped_noise(talkers, rng)
        if draws[2] < self.eq_prob:
            noise = random_equaliser(noise, rng)
        return noise


class NoiseMixingDataset(_SeededDataset):
    """Clean speech files mixed with noise recordings on the fly, reproducibly: item `index` takes clean file
    `index % len(clean_files)` (or one drawn by `clean_probabilities`), a random crop of `segment_samples` of it
    (the whole file without), and mixes it by a [`NoiseMixer`] built from the other arguments (babble: other clean
    files). `items_per_epoch` sets the epoch length (default: one pass over the clean files)."""

    def __init__(
        self,
        clean_files: Sequence[str | Path],
        noise_files: Sequence[str | Path],
        sampling_rate: int,
        segment_samples: int | None = None,
        *,
        items_per_epoch: int | None = None,
        seed: int = 0,
        clean_probabilities: Sequence[float] | None = None,
        **mixing,
    ):
        """`mixing`: the [`NoiseMixer`]'s keyword settings (`snr_range`, `gain_range`, the augmentation
        probabilities, `normalise`, `headers`, `noise_probabilities`, `rir_files`, `skip_unreadable`)."""
        super().__init__(sampling_rate, segment_samples, seed, mixing.get("normalise", False))
        if not clean_files:
            raise ValueError("NoiseMixingDataset needs at least one clean file.")
        mixing["headers"] = dict(mixing.get("headers") or {})
        self.mixer = NoiseMixer(noise_files, sampling_rate, seed=seed, **mixing)
        self.clean_files = [str(f) for f in clean_files]
        self.items_per_epoch = items_per_epoch or len(self.clean_files)
        self._clean_cdf = _cumulative(clean_probabilities, len(self.clean_files), "clean_probabilities")

    def __len__(self) -> int:
        return self.items_per_epoch

    def _crop(self, path: str, rng: np.random.Generator) -> np.ndarray:
        """[`random_crop`] of the file at the model rate (the whole file without a segment length), reading only
        the crop when the file is at the model rate; the same samples and random draws as decoding it all."""
        frames, rate = self.mixer.header(path)
        length = self.segment_samples
        if length is None or rate != self.sampling_rate:
            audio = decode_audio(path, self.sampling_rate)
            return audio if length is None else random_crop(audio, length, rng)
        if frames >= length:
            return read_window(path, int(rng.integers(0, frames - length + 1)), length)
        return np.pad(read_window(path, 0, frames), (0, length - frames))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.mixer.redrawing(functools.partial(self._draw, index))

    def _draw(self, index: int, attempt: int) -> dict[str, torch.Tensor]:
        # A redrawn item (attempt > 0) takes a random clean file from its own random numbers.
        rng = self._rng(index) if attempt == 0 else np.random.default_rng((self.seed, self.epoch, index, attempt))
        if self._clean_cdf is None:
            number = index if attempt == 0 else int(rng.integers(len(self.clean_files)))
            clean_file = self.clean_files[number % len(self.clean_files)]
        else:
            clean_file = self.clean_files[int(np.searchsorted(self._clean_cdf, rng.uniform(), side="right"))]

        def babble(count: int, length: int) -> np.ndarray:
            talkers = rng.integers(0, len(self.clean_files), count)
            return sum(self.mixer.loop(self.clean_files[int(i)], length, rng) for i in talkers).astype(np.float32)

        return self.mixer.mix(self._crop(clean_file, rng), rng, babble)


def _cumulative(probabilities: Sequence[float] | None, count: int, name: str) -> np.ndarray | None:
    """The cumulative distribution of per-file draw probabilities (checked), or `None` for the unweighted order."""
    if probabilities is None:
        return None
    values = np.asarray(probabilities, dtype=np.float64)
    if values.shape != (count,) or not np.isfinite(values).all() or (values < 0).any() or not values.sum() > 0:
        raise ValueError(f"{name} must be {count} finite values >= 0 with a positive sum.")
    cdf = np.cumsum(values / values.sum())
    cdf[-1] = 1.0
    return cdf


def collate_pairs(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items into `clean`/`noisy` `(batch, samples)`, zero-padding to the longest, plus `lengths` `(batch,)`
    (and `worker` and `row` `(batch,)` for streamed items)."""
    lengths = torch.tensor([item["clean"].shape[0] for item in items])
    longest = int(lengths.max())

    def stack(key: str) -> torch.Tensor:
        return torch.stack([torch.nn.functional.pad(item[key], (0, longest - item[key].shape[0])) for item in items])

    batch = {"clean": stack("clean"), "noisy": stack("noisy"), "lengths": lengths}
    for key in ("worker", "row"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    return batch


# Batches each DataLoader worker may have ready or under way (PyTorch's `prefetch_factor`; its default is 2). Items
# differ in cost (a new noise file, babble, a room) and batches arrive in order, so with 2 a worker often idled
# behind its partner's slow batch: 4 drew 1.0-1.3x the items of 2 in paired runs (docs/training.md).
LOADER_PREFETCH = 4


def _shared_memory_room(size: int) -> bool:
    """Whether /dev/shm (where Linux keeps shared memory; containers often give it 64 MiB) has twice `size` bytes
    free; true where there is no such folder to ask."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return True
    return stats.f_bavail * stats.f_frsize >= 2 * size


class SharedBatches:
    """A `collate_fn` that hands fixed-shape batches from DataLoader workers to the trainer through shared memory
    each worker allocates once and reuses.

    PyTorch moves every batch a worker returns into fresh shared memory, one segment (and one file descriptor
    passed) per tensor, and faulting in fresh pages can cost more than mixing the items (docs/training.md: 1 MiB
    of batch took a worker longer to hand over than to mix). Here a worker writes a batch of `batch_size` items of
    `samples` samples into one of its `slots` free buffers and returns only which one; [`iterate`], in the trainer,
    copies each batch out as the DataLoader returns it and frees the slot. A batch of another shape, one that finds
    no free slot, one made without workers and those of a worker that found too little room in /dev/shm for its
    buffers are [`collate_pairs`]'s, so what the trainer gets is the same either way: `clean`/`noisy`
    `(batch, samples)`, `lengths` `(batch,)`, and `worker`/`row` `(batch,)` for streamed items.
    """

    def __init__(self, batch_size: int, samples: int, slots: int = LOADER_PREFETCH + 1):
        if batch_size < 1 or samples < 1 or slots < 1:
            raise ValueError(f"batch_size, samples and slots must be positive, got {batch_size}, {samples}, {slots}.")
        self.batch_size, self.samples, self.slots = batch_size, samples, slots
        # A worker has at most `prefetch_factor` batches the trainer has not taken, and is sent its next one before
        # the trainer copies the last out: one slot more than that is enough.
        # In a worker: its buffers (slots, 2, batch, samples) and flags (slots + 1,): 1 = a slot holds a batch the
        # trainer has not copied yet; the last flag says the trainer has the buffers.
        self._ring: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict:
        shape = (self.samples,)
        if (
            torch.utils.data.get_worker_info() is None
            or self.slots == 0
            or len(items) != self.batch_size
            or any(item["clean"].shape != shape or item["noisy"].shape != shape for item in items)
            or (self._ring is not None and items[0]["clean"].dtype != self._ring[0].dtype)
        ):
            return collate_pairs(items)
        if self._ring is None:
            dtype = items[0]["clean"].dtype
            if not _shared_memory_room(self.slots * 2 * self.batch_size * self.samples * dtype.itemsize):
                self.slots = 0  # a full /dev/shm would kill the worker (SIGBUS): this worker hands over plainly
                return collate_pairs(items)
            buffers = torch.zeros(self.slots, 2, self.batch_size, self.samples, dtype=dtype).share_memory_()
            self._ring = buffers, torch.zeros(self.slots + 1, dtype=torch.int32).share_memory_()
        buffers, flags = self._ring
        free = torch.nonzero(flags[:-1] == 0)
        if len(free) == 0:
            return collate_pairs(items)
        slot = int(free[0])
        flags[slot] = 1
        torch.stack([item["clean"] for item in items], out=buffers[slot, 0])
        torch.stack([item["noisy"] for item in items], out=buffers[slot, 1])
        # Plain numbers travel in the message itself; only the buffers are shared, once.
        batch = {"slot": (os.getpid(), slot)}
        batch.update({key: [int(item[key]) for item in items] for key in ("worker", "row") if key in items[0]})
        if not flags[-1]:
            batch["ring"] = self._ring
        return batch

    def iterate(self, loader: Iterable[dict]) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of one pass over `loader` (a DataLoader with this `collate_fn`), each copied out of its
        worker's buffer as it arrives. The workers of a pass are new processes, so their buffers are forgotten
        when the pass ends."""
        rings: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # this pass's workers' buffers, by process id
        for batch in loader:
            yield self._receive(batch, rings)

    def _receive(self, batch: dict, rings: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if "slot" not in batch:
            return batch
        process, slot = batch.pop("slot")
        if "ring" in batch:
            rings[process] = batch.pop("ring")
            rings[process][1][-1] = 1
        if process not in rings:
            raise RuntimeError(
                f"A batch from DataLoader worker process {process}, whose buffers this pass has not received: "
                "SharedBatches needs new workers for every pass (persistent_workers=False)."
            )
        buffers, flags = rings[process]
        both = buffers[slot].clone()
        flags[slot] = 0
        received = {"clean": both[0], "noisy": both[1], "lengths": torch.full((self.batch_size,), self.samples)}
        received.update({key: torch.tensor(values) for key, values in batch.items()})
        return received


# Shard formats `datasets` streams by file suffix, for glob patterns (a folder is recognised by `datasets` itself).
STREAM_BUILDERS = {".tar": "webdataset", ".parquet": "parquet", ".arrow": "arrow"}


# The columns of every speech stream: the undecoded audio cell and the utterance's identity.
AUDIO_CELL = datasets.Features({"bytes": datasets.Value("binary"), "path": datasets.Value("string")})
STREAM_FEATURES = datasets.Features({"audio": AUDIO_CELL, "key": datasets.Value("string")})


def audio_column(features: datasets.Features | None, source: str) -> str:
    """The first audio column of a dataset: `Audio` typed (WebDataset `flac`/`wav` members, audio parquet), or a
    plain `{"bytes", "path"}` struct (parquet written without `datasets`' metadata)."""
    for name, feature in (features or {}).items():
        if isinstance(feature, datasets.Audio) or (isinstance(feature, dict) and "bytes" in feature):
            return name
    raise ValueError(
        f"{source}: no audio column (columns {list(features or {})}); store speech as an Audio feature or as "
        "WebDataset members named <key>.flac / <key>.wav."
    )


def load_stream(source: str | Path, split: str = "train") -> datasets.IterableDataset:
    """A clean-speech source streamed by `datasets`, as columns `audio` (an undecoded `{"bytes", "path"}` cell,
    read by [`decode_audio`], so `datasets` needs no audio backend) and `key` (the WebDataset key or stored path).
    Sources: a Hub dataset id, a folder of parquet, arrow or WebDataset tar shards (or a glob of them), or a folder
    written by `save_to_disk`. Shards are what `datasets` splits between processes and DataLoader workers, so give
    a source at least as many shards as workers in all.

    Raises:
        ValueError: no such split, or no audio column.
    """
    source = str(source)
    path = Path(source)
    if path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{source}: the dataset has splits {list(loaded)}; it needs a '{split}' split.")
            loaded = loaded[split]
        column = audio_column(loaded.features, source)
        loaded = loaded.cast_column(column, AUDIO_CELL)
        stream = loaded.to_iterable_dataset(num_shards=max(1, min(len(loaded), 64)))
    else:
        try:
            if any(character in source for character in "*?["):
                builder = STREAM_BUILDERS.get(Path(source).suffix.lower())
                if builder is None:
                    raise ValueError(f"a glob of shards ends in one of {', '.join(STREAM_BUILDERS)}")
                stream = datasets.load_dataset(builder, data_files={split: source}, split=split, streaming=True)
            else:
                stream = datasets.load_dataset(source, split=split, streaming=True)
        except ValueError as error:  # datasets' own message names the unknown split
            raise ValueError(f"{source}: cannot stream its '{split}' split ({error}).") from error
        column = audio_column(stream.features, source)
        stream = stream.cast_column(column, AUDIO_CELL)

    def normalise(row: dict) -> dict:
        cell = row[column] or {}
        return {"audio": cell, "key": str(row.get("__key__") or cell.get("path") or "")}

    return stream.map(normalise, remove_columns=list(stream.column_names), features=STREAM_FEATURES)


def write_speech_shards(
    sources: str | Path | Sequence[str | Path], output: str | Path, shards: int, seed: int = 0, progress: bool = True
) -> list[Path]:
    """Pack the audio files of `sources` ([`list_audio`]: folders, files, lists) into `shards` WebDataset tar files
    `output/speech-NNNNN.tar` for `clean_streams`: each file's bytes unchanged as member `<key>.<ext>`, its key the
    path below its source with `/` and `.` replaced, files spread over the shards in a seeded random order (so each
    shard mixes talkers). Shards are written whole to a temporary name and renamed; returns their paths."""
    if shards < 1:
        raise ValueError(f"shards must be positive, got {shards}.")
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    entries = []
    for number, source in enumerate(map(Path, sources)):
        base = source if source.is_dir() else source.parent
        for path in list_audio(source):
            relative = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
            key = re.sub(r"[/.]", "_", str(relative.with_suffix("")))
            key = f"{number}_{key}" if len(sources) > 1 else key  # two sources may hold the same names
            entries.append((f"{key}{path.suffix.lower()}", path))
    order = np.random.default_rng(seed).permutation(len(entries))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    bar = tqdm(total=len(entries), desc="packing shards", unit="file", disable=not progress)
    for shard in range(min(shards, len(entries))):
        target = output / f"speech-{shard:05d}.tar"
        partial = output / f".{target.name}.tmp"
        with tarfile.open(partial, "w") as archive:
            for index in order[shard::shards]:
                name, path = entries[int(index)]
                archive.add(path, arcname=name, recursive=False)
                bar.update(1)
        os.replace(partial, target)
        written.append(target)
    bar.close()
    return written


def hold_out_stream(
    stream: datasets.IterableDataset, count: int, folder: str | Path, sampling_rate: int, write: bool = True
) -> tuple[list[Path], set[str]]:
    """The first `count` utterances of a [`load_stream`] stream (in its stored order) for validation: their files
    in `folder`, 16-bit WAV at `sampling_rate`, and their keys, which training skips. With `write` the files are
    written (atomically; kept for a resumed run); other processes of a run only need the keys."""
    folder = Path(folder)
    files, keys = [], set()
    for number, row in enumerate(stream.take(count)):
        target = folder / f"{number:05d}.wav"
        if write and not target.is_file():
            with atomic_audio_writer(target, sampling_rate, 1, "PCM_16") as handle:
                handle.write(decode_audio(row["audio"], sampling_rate))
        files.append(target)
        keys.add(row["key"])
    if not files:
        raise ValueError("The speech stream is empty.")
    return files, keys


def _babble_from(recent: list[np.ndarray], rng: np.random.Generator, talkers: int, length: int) -> np.ndarray | None:
    """The sum of `talkers` crops drawn from `recent` (each looped from a random offset), or `None` if empty."""
    if not recent:
        return None
    picks = rng.integers(0, len(recent), talkers)
    return sum(loop_from_random_offset(recent[int(i)], length, rng) for i in picks).astype(np.float32)


class StreamingMixingDataset(torch.utils.data.IterableDataset):
    """Clean speech streamed by `datasets` ([`load_stream`]'s columns) mixed with noise on the fly by a [`NoiseMixer`]:
    each epoch is one pass over the stream, every utterance (except the `exclude` keys) cropped once.

    Processes read disjoint shards (`split_dataset_by_node` with `rank`/`world_size`), and so do the DataLoader
    workers within a process (`datasets` splits the shards among them). Each epoch shuffles shard order and a
    `shuffle_buffer` of utterances by `(seed, epoch)`, and item `n` of worker `w` draws its crop and mixture from
    `(seed, epoch, rank, w, n)`, so an epoch replays exactly with the same processes and workers. Items are
    `{"clean", "noisy"}` `(segment_samples,)` plus `"worker"` and `"row"` (how many rows that worker has read this
    epoch, this one included), so that a trainer can record where each worker is; [`resume`] skips those rows (read,
    not decoded). Rows are not checked before training: one that cannot be decoded is named in a warning and
    skipped (it still counts as read, so a resumed epoch stays exact). Babble draws from the worker's last
    `babble_talkers` crops.
    """

    def __init__(
        self,
        stream: datasets.IterableDataset,
        mixer: NoiseMixer,
        segment_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        exclude: set[str] | frozenset[str] = frozenset(),
        babble_talkers: int = 16,
    ):
        if world_size > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        self.stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer > 1 else stream
        self.mixer, self.segment_samples = mixer, segment_samples
        self.seed, self.rank, self.exclude, self.babble_talkers = seed, rank, set(exclude), babble_talkers
        self.epoch = 0
        self.consumed: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.consumed = {}
        self.stream.set_epoch(epoch)

    def resume(self, consumed: dict[int, int]) -> None:
        """Start the current epoch after the rows each worker (by id) had already read (its last item's `row`)."""
        self.consumed = {int(worker): int(count) for worker, count in consumed.items()}

    def _crop(self, row: dict, rng: np.random.Generator) -> np.ndarray:
        return random_crop(decode_audio(row["audio"], self.mixer.sampling_rate), self.segment_samples, rng)

    def _mix(
        self, clean: np.ndarray, recent: list[np.ndarray], rng: np.random.Generator, item: tuple[int, int], attempt: int
    ) -> dict[str, torch.Tensor]:
        """The mixture of `clean`, item `(worker, n)`; a redraw (attempt > 0, after an unreadable noise file) draws
        from its own numbers."""
        if attempt:
            rng = np.random.default_rng((self.seed, self.epoch, self.rank, *item, attempt))
        return self.mixer.mix(clean, rng, functools.partial(_babble_from, recent, rng))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        skip = self.consumed.get(worker, 0)
        recent: list[np.ndarray] = []
        count = 0
        for row in self.stream:
            if row["key"] in self.exclude:
                continue
            rng = np.random.default_rng((self.seed, self.epoch, self.rank, worker, count))
            count += 1
            if count <= skip - self.babble_talkers:
                continue  # delivered before the resume, and too old to be a babble talker
            try:
                clean = self._crop(row, rng)
            except AudioError as error:
                self.mixer.skipping(f"stream row {row['key']!r}: {error}")
                continue
            draw = functools.partial(self._mix, clean, recent, rng, (worker, count))
            item = None if count <= skip else self.mixer.redrawing(draw)
            recent = (recent + [clean])[-self.babble_talkers :]
            if item is not None:
                yield {**item, "worker": torch.tensor(worker), "row": torch.tensor(count)}


def in_worker_order(
    batches: Iterable[dict[str, torch.Tensor]], workers: int, first: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """Streamed batches (each from one DataLoader worker, named by its `worker` entry) in round-robin order from
    worker `first`: the order an uninterrupted epoch had, for a loader restarted mid-epoch (which begins with
    worker 0). A worker is taken as finished when another delivers twice while it is awaited; at most one batch per
    worker waits."""
    if workers < 2:
        yield from batches
        return
    waiting: dict[int, deque] = {w: deque() for w in range(workers)}
    active = list(range(workers))
    turn = first % workers

    def advance(after: int) -> int:
        position = active.index(after) if after in active else -1
        return active[(position + 1) % len(active)] if active else -1

    for batch in batches:
        waiting[int(batch["worker"][0])].append(batch)
        while active and waiting[turn]:
            yield waiting[turn].popleft()
            turn = advance(turn)
        if active and any(len(queue) > 1 for queue in waiting.values()):
            finished = turn  # a full cycle passed without it
            turn = advance(finished)
            active.remove(finished)
            while active and waiting[turn]:
                yield waiting[turn].popleft()
                turn = advance(turn)
    for worker in sorted(waiting, key=lambda w: (w - turn) % workers):
        yield from waiting[worker]
