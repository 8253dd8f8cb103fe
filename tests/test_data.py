import json
import logging
import os

import datasets
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from helpers import DATA, noise_like_utterances

from hybrid_mpsenet.audio import AudioError
from hybrid_mpsenet.data import (
    NoiseMixer,
    NoiseMixingDataset,
    PairedSpeechDataset,
    collate_pairs,
    coloured_noise,
    decode_audio,
    list_audio,
    load_voicebank,
    mix_at_snr,
    simulate_room,
    speech_shaped_noise,
)

SPEECH = ["LJ001-0002.wav", "arctic_a0001.wav"]
NOISE = ["ambi_drone.wav", "running_tap_8s.wav"]


def noisy_copy(path, rate):
    clean = decode_audio(str(DATA / path), 16000)
    noise = decode_audio(str(DATA / "running_tap_8s.wav"), 16000)[: len(clean)]
    noisy = mix_at_snr(clean, noise, 5.0)
    return (clean, noisy) if rate == 16000 else (soxr.resample(clean, 16000, rate), soxr.resample(noisy, 16000, rate))


def write_pairs(clean_dir, noisy_dir, ids, rate=16000):
    clean_dir.mkdir(parents=True)
    noisy_dir.mkdir(parents=True)
    for item, path in zip(ids, SPEECH, strict=True):
        clean, noisy = noisy_copy(path, rate)
        sf.write(clean_dir / f"{item}.wav", clean, rate)
        sf.write(noisy_dir / f"{item}.wav", noisy[:-7], rate)  # partners may differ by a few samples


def test_original_voicebank_layout_at_48k_is_resampled_and_trimmed(tmp_path, caplog):
    write_pairs(
        tmp_path / "clean_trainset_28spk_wav", tmp_path / "noisy_trainset_28spk_wav", ["p1_001", "p2_001"], 48000
    )
    write_pairs(tmp_path / "clean_testset_wav", tmp_path / "noisy_testset_wav", ["p9_001", "p9_002"], 48000)
    sf.write(tmp_path / "clean_trainset_28spk_wav" / "p3_001.wav", np.zeros(1000), 48000)  # no noisy partner
    with caplog.at_level(logging.WARNING):
        pairs = load_voicebank(tmp_path, "train")
    assert pairs["id"] == ["p1_001", "p2_001"] and "no partner" in caplog.text and "p3_001" in caplog.text
    assert load_voicebank(tmp_path, "test")["id"] == ["p9_001", "p9_002"]
    item = PairedSpeechDataset(pairs, 16000)[0]
    clean, noisy = noisy_copy(SPEECH[0], 16000)
    assert abs(item["clean"].shape[0] - len(clean)) <= 3 and item["clean"].shape == item["noisy"].shape
    got, want = item["clean"].numpy()[100:-100], clean[100 : item["clean"].shape[0] - 100]
    assert 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2)) > 30  # only the 8 kHz band edge differs


def test_mpsenet_layout_uses_the_split_lists(tmp_path):
    write_pairs(tmp_path / "wavs_clean", tmp_path / "wavs_noisy", ["p1_001", "p2_001"])
    (tmp_path / "training.txt").write_text("p1_001|some text\n")
    (tmp_path / "test.txt").write_text("p2_001|other text\n\n")
    assert load_voicebank(tmp_path, "train")["id"] == ["p1_001"]
    assert load_voicebank(tmp_path, "test")["id"] == ["p2_001"]


@pytest.mark.parametrize("storage", ["save_to_disk", "parquet"])
def test_hub_schema_dataset_from_local_storage(tmp_path, storage):
    write_pairs(tmp_path / "c", tmp_path / "n", ["a", "b"])
    table = (
        datasets.Dataset.from_dict(
            {
                "id": ["a", "b"],
                "clean": [str(tmp_path / "c" / f"{i}.wav") for i in "ab"],
                "noisy": [str(tmp_path / "n" / f"{i}.wav") for i in "ab"],
            }
        )
        .cast_column("clean", datasets.Audio())
        .cast_column("noisy", datasets.Audio())
    )
    splits = datasets.DatasetDict({"train": table, "test": table.select([1])})
    if storage == "save_to_disk":
        splits.save_to_disk(str(tmp_path / "ds"))
    else:
        (tmp_path / "ds").mkdir()
        for name, split in splits.items():
            split.to_parquet(str(tmp_path / "ds" / f"{name}.parquet"))
    train = load_voicebank(tmp_path / "ds", "train")
    assert train["id"] == ["a", "b"] and load_voicebank(tmp_path / "ds", "test")["id"] == ["b"]
    item = PairedSpeechDataset(train, 16000)[1]
    expected = sf.read(tmp_path / "c" / "b.wav", dtype="float32")[0]
    np.testing.assert_array_equal(item["clean"].numpy(), expected[: item["clean"].shape[0]])


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_mixing_hits_the_requested_snr(snr):
    clean = decode_audio(str(DATA / SPEECH[1]), 16000)
    noise = decode_audio(str(DATA / NOISE[1]), 16000)[: len(clean)]
    noisy = mix_at_snr(clean, noise, snr)
    measured = 10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum((noisy - clean).astype(np.float64) ** 2))
    assert abs(measured - snr) < 0.1


def test_noise_mixing_dataset_is_seeded_cropped_and_in_range():
    def make(seed):
        return NoiseMixingDataset(
            [DATA / s for s in SPEECH],
            [DATA / n for n in NOISE],
            16000,
            8000,
            snr_range=(0.0, 10.0),
            items_per_epoch=6,
            seed=seed,
        )

    first, again, other = make(1), make(1), make(2)
    for index in range(6):
        item = first[index]
        assert item["clean"].shape == item["noisy"].shape == (8000,)
        assert float(item["noisy"].abs().max()) < 1.0
        assert np.array_equal(item["noisy"].numpy(), again[index]["noisy"].numpy())
        noise = (item["noisy"] - item["clean"]).double()
        if float(item["clean"].pow(2).sum()) > 0:
            snr = 10 * np.log10(float(item["clean"].double().pow(2).sum() / noise.pow(2).sum()))
            assert -0.1 < snr < 10.1
    assert not np.array_equal(first[0]["noisy"].numpy(), other[0]["noisy"].numpy())
    epoch0 = first[0]["noisy"].numpy()
    first.set_epoch(1)
    assert not np.array_equal(epoch0, first[0]["noisy"].numpy())
    batch = collate_pairs([first[0], first[1]])
    assert batch["clean"].shape == (2, 8000) and batch["lengths"].tolist() == [8000, 8000]


def test_bad_folders_and_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_voicebank(tmp_path / "missing")
    (tmp_path / "random").mkdir()
    with pytest.raises(ValueError, match="not a folder of clean/noisy pairs"):
        load_voicebank(tmp_path / "random")
    (tmp_path / "wavs_clean").mkdir()
    (tmp_path / "wavs_noisy").mkdir()
    with pytest.raises(FileNotFoundError, match="training.txt"):
        load_voicebank(tmp_path)
    (tmp_path / "training.txt").write_text("p1_001|x\n")
    with pytest.raises(ValueError, match="No clean/noisy pairs"):
        load_voicebank(tmp_path)
    with pytest.raises(ValueError, match="No audio files"):
        list_audio(tmp_path / "random")
    with pytest.raises(ValueError, match="split must be"):
        load_voicebank(tmp_path, "dev")


def test_augmentations_are_seeded_keep_the_snr_and_change_the_noise():
    def make(**augment):
        return NoiseMixingDataset(
            [DATA / s for s in SPEECH],
            [DATA / NOISE[1]],
            16000,
            8000,
            snr_range=(5.0, 5.0),
            items_per_epoch=4,
            seed=3,
            **augment,
        )

    plain = make()
    augments = ({"coloured_noise_prob": 1.0}, {"babble_prob": 1.0}, {"speech_shaped_prob": 1.0}, {"eq_prob": 1.0})
    for augment in augments:
        first, again = make(**augment), make(**augment)
        item = first[0]
        np.testing.assert_array_equal(item["noisy"].numpy(), again[0]["noisy"].numpy())
        noise = (item["noisy"] - item["clean"]).double()
        snr = 10 * np.log10(float(item["clean"].double().pow(2).sum() / noise.pow(2).sum()))
        assert abs(snr - 5.0) < 0.1, augment
        assert not np.allclose(noise.numpy(), (plain[0]["noisy"] - plain[0]["clean"]).double().numpy()), augment
    with pytest.raises(ValueError, match="babble_prob must be a probability"):
        make(babble_prob=1.5)


def test_speech_shaped_noise_keeps_the_spectrum_of_speech_and_none_of_its_rhythm():
    speech = sum(decode_audio(str(DATA / name), 16000)[:24000] for name in SPEECH).astype(np.float32)
    noise = speech_shaped_noise(speech, np.random.default_rng(0))
    np.testing.assert_array_equal(noise, speech_shaped_noise(speech, np.random.default_rng(0)))
    assert noise.dtype == np.float32 and np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-4)
    # The same magnitude spectrum (up to the gain) ...
    ratio = np.abs(np.fft.rfft(noise))[1:] / np.maximum(np.abs(np.fft.rfft(speech))[1:], 1e-9)
    assert np.std(ratio[np.abs(np.fft.rfft(speech))[1:] > 1e-3]) < 1e-3 * np.mean(ratio)

    # ... but a flat envelope: the 100-ms energies of speech (even of two talkers) spread wider than the noise's.
    def envelope_spread_db(x):
        energies = 10 * np.log10(np.mean(x[: len(x) // 1600 * 1600].reshape(-1, 1600) ** 2, axis=1) + 1e-12)
        return np.percentile(energies, 90) - np.percentile(energies, 10)

    assert envelope_spread_db(noise) < 3 < envelope_spread_db(speech)


def test_coloured_noise_slopes():
    rng = np.random.default_rng(0)
    for exponent, expected in ((0.0, 0.0), (1.0, -3.0), (2.0, -6.0)):  # dB per octave
        noise = coloured_noise(2**16, exponent, rng)
        power = np.abs(np.fft.rfft(noise)) ** 2
        low, high = power[256:512].mean(), power[512:1024].mean()
        assert abs(10 * np.log10(high / low) - expected) < 1.0


def test_simulated_rooms_are_seeded_and_their_reverberation_follows_the_requested_rt60():
    import pyroomacoustics as pra

    def room(rt60):
        # The same seed gives the same geometry, so only the wall absorption differs.
        return simulate_room(np.random.default_rng(5), 16000, rt60_range=(rt60, rt60))

    full, early = room(0.3)
    again, _ = room(0.3)
    np.testing.assert_array_equal(full, again)
    np.testing.assert_array_equal(early, full[: len(early)])
    direct = int(np.argmax(np.abs(full)))
    assert full[direct] == 1.0 and len(early) == direct + 800  # direct path + 50 ms at 16 kHz
    short, long = pra.experimental.measure_rt60(full, fs=16000), pra.experimental.measure_rt60(room(0.8)[0], fs=16000)
    assert 0.2 < short < 0.7 and long > short + 0.2, (short, long)


def test_reverberant_mixtures_target_the_early_reflections():
    def make(reverb_prob):
        return NoiseMixingDataset(
            [DATA / s for s in SPEECH],
            [DATA / NOISE[1]],
            16000,
            16000,
            snr_range=(5.0, 5.0),
            gain_range=(0.0, 0.0),
            items_per_epoch=2,
            seed=7,
            reverb_prob=reverb_prob,
        )

    dry, wet = make(0.0)[1], make(1.0)[1]
    np.testing.assert_array_equal(wet["noisy"].numpy(), make(1.0)[1]["noisy"].numpy())
    # The target keeps the talker (close to the dry crop up to the direct-path delay) but is not the dry crop.
    assert not np.allclose(wet["clean"].numpy(), dry["clean"].numpy())
    correlation = np.correlate(wet["clean"].numpy(), dry["clean"].numpy(), "full") / (
        np.linalg.norm(wet["clean"].numpy()) * np.linalg.norm(dry["clean"].numpy())
    )
    assert correlation.max() > 0.5
    # The input carries the late reverberation that the target lacks: more than the noise alone explains.
    residual = (wet["noisy"] - wet["clean"]).double().pow(2).mean()
    target = wet["clean"].double().pow(2).mean()
    assert 10 * np.log10(float(target / residual)) < 5.0


def test_window_reads_give_the_same_items_as_decoding_whole_files(tmp_path):
    """Crops, noise windows (wrapping around) and babble read by seeking equal those cut from whole decoded files:
    the same samples and the same random draws, so runs and resumes are unchanged."""
    from hybrid_mpsenet.data import NoiseMixingDataset, audio_header

    clean = [DATA / name for name in ("LJ001-0002.wav", "arctic_a0001.wav", "p232_001_clean.wav")]
    noise = [DATA / "running_tap_8s.wav", DATA / "ambi_drone.wav"]
    options = dict(items_per_epoch=12, seed=3, babble_prob=0.5, eq_prob=0.3, normalise=True)
    by_window = NoiseMixingDataset(clean, noise, 16000, 12000, **options)
    # Headers claiming another rate send every read through the whole-file decoder (no resampling is needed).
    whole = {str(p): (audio_header(p)[0], 8000) for p in [*clean, *noise]}
    by_decoding = NoiseMixingDataset(clean, noise, 16000, 12000, headers=whole, **options)
    for epoch in (0, 1):
        by_window.set_epoch(epoch)
        by_decoding.set_epoch(epoch)
        for index in range(12):
            a, b = by_window[index], by_decoding[index]
            assert torch.equal(a["clean"], b["clean"]) and torch.equal(a["noisy"], b["noisy"]), (epoch, index)


def test_the_header_check_finds_bad_files_fast_and_remembers_headers(tmp_path, monkeypatch):
    from hybrid_mpsenet import data
    from hybrid_mpsenet.data import check_audio_files

    good = tmp_path / "good.wav"
    good.write_bytes((DATA / "LJ001-0002.wav").read_bytes())
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * 800, np.float32), 16000, subtype="FLOAT")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not audio")
    sf.write(tmp_path / "one_hz.wav", np.zeros(100, np.int16), 1)
    files = sorted(tmp_path.glob("*.wav"))
    with pytest.raises(ValueError, match="2 speech file") as error:
        check_audio_files(files, "speech", progress=False, full=False)
    assert "broken.wav: not readable" in str(error.value) and "one_hz.wav: the sampling rate" in str(error.value)
    with pytest.raises(ValueError, match="3 speech file"):
        check_audio_files(files, "speech", progress=False, full=True)  # full also finds the NaN file
    cache = tmp_path / "run" / "audio_index.json"
    headers = check_audio_files([good, tmp_path / "nan.wav"], "speech", progress=False, full=False, cache=cache)
    assert headers[str(good)] == (30393, 16000)
    monkeypatch.setattr(data, "audio_header", lambda path: pytest.fail(f"{path} was read again"))
    assert check_audio_files([good], "speech", progress=False, full=False, cache=cache) == {str(good): (30393, 16000)}
    good.write_bytes((DATA / "arctic_a0001.wav").read_bytes())  # changed since: read again
    monkeypatch.undo()
    assert check_audio_files([good], "speech", progress=False, full=False, cache=cache)[str(good)][0] == 53680


def test_file_lists_and_kaldi_scp_and_source_weights(tmp_path):
    from hybrid_mpsenet.data import NoiseMixingDataset, list_weighted_audio

    speech = [DATA / "LJ001-0002.wav", DATA / "arctic_a0001.wav", DATA / "p232_001_clean.wav"]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.txt").write_text(f"# speech\n{speech[0]} 3\n\n{speech[1]}\n")
    (tmp_path / "lists" / "b.scp").write_text(f"utt1 {speech[2]}\n")
    files, probabilities = list_weighted_audio([tmp_path / "lists" / "a.txt", tmp_path / "lists" / "b.scp"])
    assert files == speech and probabilities.tolist() == [0.6, 0.2, 0.2]  # the list's weight column
    files, probabilities = list_weighted_audio([tmp_path / "lists" / "a.txt", DATA / "p232_001_clean.wav"], [1, 3])
    assert probabilities.tolist() == [0.1875, 0.0625, 0.75]  # each source its share, spread by the list's weights
    assert list_weighted_audio([DATA / "LJ001-0002.wav", DATA / "arctic_a0001.wav"])[1] is None  # an even pass

    # Draws follow the weights: the third file (weight 0.75) is drawn about three times as often as the rest.
    dataset = NoiseMixingDataset(files, [DATA / "running_tap_8s.wav"], 16000, 4000, items_per_epoch=400, seed=0,
                                 clean_probabilities=probabilities)  # fmt: skip
    chosen = {}
    real_crop = dataset._crop
    dataset._crop = lambda path, rng: (chosen.__setitem__(path, chosen.get(path, 0) + 1), real_crop(path, rng))[1]
    for index in range(400):
        dataset[index]
    assert 0.68 < chosen[str(speech[2])] / 400 < 0.82

    (tmp_path / "lists" / "bad.txt").write_text("missing.wav\nnotes.md\n" + f"{speech[0]} -1\n")
    with pytest.raises(ValueError, match=r"(?s)3 unusable entries:\n  line 1: missing.wav is missing.*line 2.*line 3"):
        list_weighted_audio(tmp_path / "lists" / "bad.txt")
    (tmp_path / "lists" / "piped.scp").write_text("utt1 sox a.wav -t wav - |\n")
    with pytest.raises(ValueError, match="piped command"):
        list_weighted_audio(tmp_path / "lists" / "piped.scp")
    with pytest.raises(ValueError, match="one weight per source"):
        list_weighted_audio([DATA], [1, 2])


def test_training_reads_weighted_sources_from_the_command_line(tmp_path):
    from hybrid_mpsenet.training import build_datasets, parse_training_arguments

    (tmp_path / "speech.txt").write_text("\n".join(str(DATA / n) for n in ("LJ001-0002.wav", "arctic_a0001.wav")))
    argv = ["--output_dir", str(tmp_path / "run"), "--clean_dirs", str(tmp_path / "speech.txt")]
    argv += [str(DATA / "p232_001_clean.wav"), "--noise_dirs", str(DATA / "running_tap_8s.wav"), "--clean_weights"]
    args = parse_training_arguments([*argv, "0.25", "0.75", "--eval_fraction", "0", "--progress", "false"])
    assert args.clean_weights == [0.25, 0.75]
    train, _ = build_datasets(args, 16000)  # one file is held out for validation; its share goes to the others
    share = {str(DATA / n): p for n, p in (("LJ001-0002.wav", 0.125), ("arctic_a0001.wav", 0.125))}
    share[str(DATA / "p232_001_clean.wav")] = 0.75
    expected = np.array([share[f] for f in train.clean_files])
    assert np.diff(np.concatenate([[0], train._clean_cdf])) == pytest.approx(expected / expected.sum())
    assert json.loads((tmp_path / "run" / "audio_index.json").read_text()).keys() == {
        str(DATA / n) for n in ("LJ001-0002.wav", "arctic_a0001.wav", "p232_001_clean.wav", "running_tap_8s.wav")
    }


def test_without_a_start_up_check_unreadable_files_are_skipped_when_drawn_and_named(tmp_path, monkeypatch, caplog):
    from hybrid_mpsenet import data
    from hybrid_mpsenet.training import build_datasets, parse_training_arguments

    speech, noise = tmp_path / "speech", tmp_path / "noise"
    for folder, names in ((speech, SPEECH), (noise, NOISE)):
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes((DATA / name).read_bytes())
    (speech / "broken.wav").write_bytes(b"RIFF not audio")
    (noise / "broken_noise.wav").write_bytes(b"RIFF not audio either")
    argv = ["--output_dir", str(tmp_path / "run"), "--clean_dirs", str(speech), "--noise_dirs", str(noise)]
    argv += ["--eval_fraction", "0", "--items_per_epoch", "24", "--progress", "false"]
    with pytest.raises(ValueError, match="1 clean speech file"):
        build_datasets(parse_training_arguments(argv), 16000)  # the default header check stops the run up front
    monkeypatch.setattr(data, "audio_header", lambda path: pytest.fail(f"{path} was read at start-up"))
    train, _ = build_datasets(parse_training_arguments([*argv, "--check_audio", "none"]), 16000)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "audio_index.json").exists()
    with caplog.at_level(logging.WARNING, logger="hybrid_mpsenet.data"):
        items = [train[i] for i in range(24)]
        again = train[2]  # the broken clean file again: redrawn the same way
    assert all(torch.isfinite(item["noisy"]).all() and item["clean"].abs().max() > 0 for item in items)
    assert torch.equal(again["noisy"], items[2]["noisy"])
    warned = [r.getMessage() for r in caplog.records if "skipping a file that cannot be read" in r.getMessage()]
    assert len(warned) == 2  # each bad file named once, however often it is drawn
    assert any("broken.wav: not readable" in m for m in warned)
    assert any("broken_noise.wav: not readable" in m for m in warned)
    train.mixer.noise_files = [str(noise / "broken_noise.wav")]  # nothing readable left: the error is raised
    with pytest.raises(AudioError, match="broken_noise.wav: not readable"):
        train[0]


def test_dns_synthesised_pairs_match_by_fileid(tmp_path):
    """The DNS Challenge synthesiser's naming: `noisy/<...>_fileid_<K>.wav` pairs with `clean/clean_fileid_<K>.wav`."""
    write_pairs(tmp_path / "clean", tmp_path / "noisy", ["clean_fileid_3", "clean_fileid_12"])
    for name, new in (("clean_fileid_3", "book_0001_snr5_tl-25_fileid_3"), ("clean_fileid_12", "x_snr0_fileid_12")):
        (tmp_path / "noisy" / f"{name}.wav").rename(tmp_path / "noisy" / f"{new}.wav")
    pairs = load_voicebank(tmp_path, "train")
    assert pairs["id"] == ["fileid_12", "fileid_3"]
    assert [p.rsplit("/", 1)[1] for p in pairs["noisy"]] == [
        "x_snr0_fileid_12.wav",
        "book_0001_snr5_tl-25_fileid_3.wav",
    ]
    sf.write(tmp_path / "noisy" / "other_fileid_3.wav", np.zeros(800), 16000)
    with pytest.raises(ValueError, match="both pair as 'fileid_3'"):
        load_voicebank(tmp_path, "train")


def test_a_dns_tree_gives_speech_noise_and_measured_rooms(tmp_path):
    from hybrid_mpsenet.training import TrainingArguments, build_datasets

    root = tmp_path / "DNS" / "datasets_fullband"
    for folder, source in (("clean_fullband/read_speech", SPEECH[0]), ("noise_fullband", NOISE[1])):
        (root / folder).mkdir(parents=True)
        sf.write(root / folder / source, decode_audio(str(DATA / source), 16000), 16000)
    (root / "impulse_responses" / "SLR26").mkdir(parents=True)
    response = np.zeros(4000, np.float32)
    response[100], response[2000] = -0.5, 0.25  # direct path, then an echo 119 ms later
    sf.write(root / "impulse_responses" / "SLR26" / "room.wav", response, 16000)
    settings = {"output_dir": str(tmp_path / "run"), "dns_root": str(tmp_path / "DNS"), "reverb_prob": 1.0}
    args = TrainingArguments(**settings, eval_fraction=0.0, progress=False)
    assert args.clean_dirs == [str(root / "clean_fullband")] and args.noise_dirs == [str(root / "noise_fullband")]
    assert args.rir_dirs == [str(root / "impulse_responses")]
    train, _ = build_datasets(args, 16000)
    assert train.mixer.rir_files == [str(root / "impulse_responses" / "SLR26" / "room.wav")]
    full, early = train.mixer._measured(train.mixer.rir_files[0])
    assert full[100] == -1.0 and full[2000] == 0.5  # scaled so the direct path has magnitude 1, signs kept
    assert len(early) == 100 + 800  # the direct path and 50 ms of reflections: the echo is not in the target
    with pytest.raises(ValueError, match="set reverb_prob > 0"):
        TrainingArguments(output_dir=str(tmp_path / "run"), dns_root=str(tmp_path / "DNS"))
    with pytest.raises(FileNotFoundError, match="not a DNS Challenge tree"):
        TrainingArguments(output_dir=str(tmp_path / "run"), dns_root=str(root / "noise_fullband"))


def test_measured_impulse_responses_are_drawn_beside_the_simulated_rooms(tmp_path, monkeypatch):
    response = np.zeros(4000, np.float32)
    response[0], response[2400] = 1.0, 0.7  # an echo 150 ms late, far beyond the target's early reflections
    sf.write(tmp_path / "echo.wav", response, 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(100, np.float32), 16000)

    def make(reverb_prob, rir_files):
        return NoiseMixingDataset(
            [DATA / SPEECH[0]],
            [DATA / NOISE[1]],
            16000,
            16000,
            snr_range=(30.0, 30.0),
            gain_range=(0.0, 0.0),
            items_per_epoch=2,
            seed=7,
            reverb_prob=reverb_prob,
            rir_files=rir_files,
        )

    monkeypatch.setattr(NoiseMixer, "ROOMS", 0)  # every reverberant draw takes a measured response
    dry, wet = make(0.0, [])[0], make(1.0, [tmp_path / "echo.wav"])[0]
    np.testing.assert_allclose(wet["clean"].numpy(), dry["clean"].numpy(), atol=1e-6)  # target: direct path only
    echo = wet["noisy"].numpy() - dry["noisy"].numpy()
    # The input carries the echo (plus a slightly different noise gain: the SNR is the reverberant speech's).
    np.testing.assert_allclose(echo[2400:], 0.7 * dry["clean"].numpy()[:-2400], atol=1e-2)
    assert np.abs(echo[2400:] - 0.7 * dry["clean"].numpy()[:-2400]).mean() < 1e-3
    with pytest.raises(AudioError, match="not an impulse response"):
        make(1.0, [tmp_path / "silent.wav"])[0]


def _lengths(items):
    return [int(np.flatnonzero(item["clean"].numpy())[-1]) + 1 for item in items]


def _streamed(source, exclude=frozenset(), **options):
    from hybrid_mpsenet.data import NoiseMixer, StreamingMixingDataset, load_stream

    mixer = NoiseMixer([DATA / NOISE[1]], 16000, (10.0, 10.0), (0.0, 0.0), babble_prob=options.pop("babble", 0.0))
    return StreamingMixingDataset(load_stream(source), mixer, 8000, 3, exclude=exclude, shuffle_buffer=4, **options)


def _drawn(dataset, workers, epoch=0, consumed=None, batches=None):
    dataset.set_epoch(epoch)
    if consumed:
        dataset.resume(consumed)
    loader = torch.utils.data.DataLoader(dataset, 2, num_workers=workers, collate_fn=collate_pairs, drop_last=True)
    drawn = []
    for number, batch in enumerate(loader):
        if number == batches:
            break
        drawn += [{key: batch[key][i] for key in batch} for i in range(len(batch["clean"]))]
    return drawn


def test_speech_streams_from_tar_shards_parquet_and_saved_datasets_are_the_same(tmp_path):
    from hybrid_mpsenet.cli import main
    from hybrid_mpsenet.data import hold_out_stream, load_stream

    files = noise_like_utterances(tmp_path / "speech")
    assert main(["shard", str(tmp_path / "speech"), "-o", str(tmp_path / "shards"), "--shards", "4", "-q"]) == 0
    assert sorted(s.name for s in (tmp_path / "shards").iterdir()) == [f"speech-0000{i}.tar" for i in range(4)]
    table = datasets.Dataset.from_dict({"speech": [str(f) for f in files]}).cast_column("speech", datasets.Audio())
    table.save_to_disk(tmp_path / "saved")
    (tmp_path / "parquet").mkdir()
    for i in range(2):
        table.shard(2, i).to_parquet(tmp_path / "parquet" / f"train-{i}.parquet")
    expected = sorted(len(sf.read(f)[0]) for f in files)
    for source in ("shards", "shards/*.tar", "parquet", "saved"):
        stream = load_stream(tmp_path / source)
        assert sorted(len(decode_audio(row["audio"], 16000)) for row in stream) == expected, source
        assert len({row["key"] for row in stream}) == 16, source
    held, keys = hold_out_stream(load_stream(tmp_path / "shards"), 2, tmp_path / "held", 16000)
    assert [f.name for f in held] == ["00000.wav", "00001.wav"] and len(keys) == 2
    assert sorted(_lengths(_drawn(_streamed(tmp_path / "shards", keys), 0))) == sorted(
        set(expected) - {len(sf.read(f)[0]) for f in held}
    )  # the held-out utterances are never trained on
    with pytest.raises(ValueError, match="no audio column"):
        datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(tmp_path / "text")
        load_stream(tmp_path / "text")
    with pytest.raises(ValueError, match="cannot stream its 'dev' split"):
        load_stream(tmp_path / "parquet", split="dev")


def test_streamed_items_split_across_processes_and_workers_each_seen_once_and_replay_by_seed(tmp_path):
    from hybrid_mpsenet.data import write_speech_shards

    files = noise_like_utterances(tmp_path / "speech")
    write_speech_shards(tmp_path / "speech", tmp_path / "shards", 4, progress=False)
    every = sorted(len(sf.read(f)[0]) for f in files)
    per_process = [_lengths(_drawn(_streamed(tmp_path / "shards", rank=r, world_size=2), 2)) for r in (0, 1)]
    assert not set(per_process[0]) & set(per_process[1])  # disjoint shards
    assert sorted(per_process[0] + per_process[1]) == every  # each utterance once in the epoch
    first, again = (_drawn(_streamed(tmp_path / "shards"), 2) for _ in range(2))
    assert all(torch.equal(a["noisy"], b["noisy"]) for a, b in zip(first, again, strict=True))
    assert _lengths(_drawn(_streamed(tmp_path / "shards"), 2, epoch=1)) != _lengths(first)  # a new order


def test_a_streamed_epoch_resumes_where_each_worker_stopped_past_an_undecodable_row(tmp_path, caplog):
    from hybrid_mpsenet.data import write_speech_shards

    noise_like_utterances(tmp_path / "speech", 24)
    (tmp_path / "speech" / "utt24.wav").write_bytes(b"RIFF, but not audio")
    write_speech_shards(tmp_path / "speech", tmp_path / "shards", 4, progress=False)
    with caplog.at_level(logging.WARNING):
        assert len(_drawn(_streamed(tmp_path / "shards"), 0)) == 24  # the epoch goes on without the bad row
    assert "'utt24'" in caplog.text and "not readable" in caplog.text
    straight = _drawn(_streamed(tmp_path / "shards", babble=1.0), 2)
    before = _drawn(_streamed(tmp_path / "shards", babble=1.0), 2, batches=3)
    consumed = {w: max(int(item["row"]) for item in before if int(item["worker"]) == w) for w in (0, 1)}
    delivered = {w: sum(int(item["worker"]) == w for item in before) for w in (0, 1)}
    assert delivered == {0: 4, 1: 2} and consumed == {0: 4, 1: 3}  # worker 1 read the bad row before the stop
    after = _drawn(_streamed(tmp_path / "shards", babble=1.0), 2, consumed=consumed)

    def by_worker(items):
        return {w: [item["noisy"] for item in items if int(item["worker"]) == w] for w in (0, 1)}

    whole, resumed = by_worker(straight), by_worker(before + after)
    for worker in (0, 1):  # babble from the crops before the resume included
        assert len(whole[worker]) == len(resumed[worker]) == 12
        assert all(torch.equal(a, b) for a, b in zip(whole[worker], resumed[worker], strict=True))


def test_shared_batches_hand_over_the_plain_batches_through_reused_worker_buffers(monkeypatch):
    from hybrid_mpsenet.data import NoiseMixingDataset, SharedBatches

    dataset = NoiseMixingDataset([DATA / s for s in SPEECH], [DATA / NOISE[1]], 16000, 4000, items_per_epoch=14)

    def batches(workers, collate):
        loader = torch.utils.data.DataLoader(dataset, 2, num_workers=workers, collate_fn=collate)
        return loader, list(collate.iterate(loader) if isinstance(collate, SharedBatches) else loader)

    _, plain = batches(0, collate_pairs)
    for slots in (4, 1):  # one slot: batches that find it taken go the plain way
        shared = SharedBatches(2, 4000, slots)
        loader, handed = batches(2, shared)
        assert len(handed) == len(plain) == 7
        for left, right in zip(plain, handed, strict=True):
            assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
        raw = list(loader)  # what the workers send, never copied out here: a slot and the buffers, until full
        taken = [batch for batch in raw if "slot" in batch]
        assert len(taken) == (7 if slots == 4 else 2) and all("clean" not in b and "ring" in b for b in taken)
        with pytest.raises(RuntimeError, match="has not received"):
            list(shared.iterate({k: v for k, v in batch.items() if k != "ring"} for batch in taken))
    assert SharedBatches(2, 3000)([dataset[0], dataset[1]])["clean"].shape == (2, 4000)  # no worker: plain
    full = os.statvfs_result((4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255))  # a /dev/shm with no free block
    monkeypatch.setattr("hybrid_mpsenet.data.os.statvfs", lambda path: full)
    shared = SharedBatches(2, 4000)
    loader, handed = batches(2, shared)
    assert all(torch.equal(a["noisy"], b["noisy"]) for a, b in zip(plain, handed, strict=True))
    assert not any("slot" in batch for batch in loader)  # every worker handed over plainly


def test_restarted_loaders_give_batches_in_the_round_robin_order_of_an_uninterrupted_epoch():
    from hybrid_mpsenet.data import in_worker_order

    def batches(workers):
        return [{"worker": torch.tensor([w]), "n": n} for n, w in enumerate(workers)]

    def order(delivered, workers, first):
        return [int(b["worker"][0]) for b in in_worker_order(batches(delivered), workers, first)]

    assert order([0, 1, 2, 0, 1, 2], 3, 2) == [2, 0, 1, 2, 0, 1]  # a loader restarted after 2 (or 5) batches
    assert order([0, 2, 0, 2, 0], 3, 0) == [0, 2, 0, 2, 0]  # worker 1 ran out: the others keep their order
    assert order([0, 1, 0, 0], 2, 1) == [1, 0, 0, 0]  # worker 1 ran out after one more batch
    assert order([0, 1, 1], 2, 0) == [0, 1, 1]
    assert sorted(order([1, 0, 1], 2, 0)) == [0, 1, 1]  # out of turn: nothing is lost
