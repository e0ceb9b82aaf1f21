"""speech-kws: keywords spoken by espeak-ng, mixed with noise, as log-mel features."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from sievetrain.data import load_dataset, speech
from sievetrain.data.speech import (
    N_MELS,
    SAMPLE_RATE,
    SPEECH_KWS_FRAMES,
    SPEECH_KWS_WORDS,
    TEST_VOICES,
    TRAIN_VOICES,
    load_speech_kws,
    log_mel,
    speech_kws_plan,
)
from sievetrain.files import cache_dir

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)",
)
SIZES = (60, 40)  # train, test: about a second of espeak-ng


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of its own, so that each test generates what it checks."""
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(tmp_path))
    return tmp_path


def _cached_file():
    (path,) = (cache_dir() / "speech-kws").glob("*.pt")
    return path


# ---------------------------------------------------------------------------- the dataset


@needs_espeak
def test_shapes_labels_and_balance(cache):
    split = load_dataset("speech-kws", train_size=SIZES[0], test_size=SIZES[1])
    assert (split.name, split.num_classes) == ("speech-kws", 20)
    assert split.input_shape == (N_MELS, SPEECH_KWS_FRAMES) == (40, 101)
    for part, n in zip((split.train, split.test), SIZES, strict=True):
        x, y = part.tensors
        assert x.dtype == torch.float32 and x.shape == (n, 40, 101)
        assert bool(x.isfinite().all())
        assert y.dtype == torch.int64
        counts = torch.bincount(y, minlength=20)
        assert int(counts.max()) - int(counts.min()) <= 1  # balanced words
    x = split.train.tensors[0]
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 2  # about standardised
    # No two samples are the same: each has its own offset and noise.
    flat = x.flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat)


@needs_espeak
def test_generation_is_deterministic_and_splits_are_independent(tmp_path, monkeypatch):
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(tmp_path / "a"))
    first = load_speech_kws(*SIZES, seed=3)
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(tmp_path / "b"))
    again = load_speech_kws(*SIZES, seed=3)
    other = load_speech_kws(*SIZES, seed=4)
    bigger = load_speech_kws(SIZES[0] * 2, SIZES[1], seed=3)
    for a, b in zip(
        first.train.tensors + first.test.tensors,
        again.train.tensors + again.test.tensors,
        strict=True,
    ):
        assert torch.equal(a, b)
    assert not torch.equal(first.train.tensors[0], other.train.tensors[0])
    # The test split depends on the seed only, not on the training split's size.
    for a, b in zip(first.test.tensors, bigger.test.tensors, strict=True):
        assert torch.equal(a, b)


@needs_espeak
def test_test_voices_are_never_heard_in_training(cache, monkeypatch):
    spoken = []
    speak = speech._speak

    def recording(espeak, word, voice, speed, pitch):
        spoken.append(voice)
        return speak(espeak, word, voice, speed, pitch)

    monkeypatch.setattr(speech, "_speak", recording)
    train_plan, test_plan = (
        speech_kws_plan(n, 0, s) for s, n in zip(("train", "test"), SIZES, strict=True)
    )
    split = load_speech_kws(*SIZES)  # the training split is spoken before the test split
    n_train_calls = len(torch.unique(speech._utterances(train_plan), dim=0))
    train, test = (
        {voice.split("+")[1] for voice in part}
        for part in (spoken[:n_train_calls], spoken[n_train_calls:])
    )
    assert train <= set(TRAIN_VOICES) and test <= set(TEST_VOICES)
    assert train and test and not train & test
    assert len(spoken) == n_train_calls + len(torch.unique(speech._utterances(test_plan), dim=0))
    # The labels are the plan's words.
    assert torch.equal(split.train.tensors[1], train_plan["word"])
    assert torch.equal(split.test.tensors[1], test_plan["word"])


def test_plan_draws_every_voice_of_its_split_only():
    train, test = speech_kws_plan(2000, 0, "train"), speech_kws_plan(500, 0, "test")
    assert set(train["voice"].tolist()) == set(range(len(TRAIN_VOICES)))
    assert set(test["voice"].tolist()) == set(range(len(TEST_VOICES)))
    assert not set(TRAIN_VOICES) & set(TEST_VOICES)
    assert torch.bincount(train["word"]).tolist() == [100] * 20


# ---------------------------------------------------------------------------- the cache


@needs_espeak
def test_cache_is_checked_by_its_checksum_and_regenerated(cache, monkeypatch):
    first = load_speech_kws(*SIZES)
    path = _cached_file()
    tensors = torch.load(path, weights_only=True)
    assert tensors["espeak_version"].startswith("eSpeak NG")
    tensors["x"][5, 3, 7] += 1.0  # one value changed: shapes and dtypes still right
    torch.save(tensors, path)
    with pytest.warns(UserWarning, match=f"damaged speech-kws cache: '{path}'.*SHA-256"):
        again = load_speech_kws(*SIZES)
    assert torch.equal(again.train.tensors[0], first.train.tensors[0])
    # The file was rewritten: the next load is silent and needs no espeak-ng.
    with monkeypatch.context() as patch:
        patch.setattr(speech, "ESPEAK", "no-such-espeak-ng")
        assert torch.equal(load_speech_kws(*SIZES).test.tensors[0], first.test.tensors[0])
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match=f"damaged speech-kws cache: .*{path.name}"):
        again = load_speech_kws(*SIZES)
    assert torch.equal(again.train.tensors[0], first.train.tensors[0])


# ---------------------------------------------------------------------------- bad input


def test_missing_espeak_is_one_line_saying_how_to_install_it(cache, monkeypatch):
    monkeypatch.setattr(speech, "ESPEAK", "no-such-espeak-ng")
    message = "'no-such-espeak-ng' is not on PATH.*apt-get install espeak-ng"
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("speech-kws", train_size=20, test_size=20)
    assert "\n" not in str(info.value)
    assert not (cache / "speech-kws").exists() or not any((cache / "speech-kws").iterdir())


def test_missing_espeak_exits_2_from_the_cli(cache, monkeypatch, capsys, tmp_path):
    from sievetrain.cli import main

    monkeypatch.setattr(speech, "ESPEAK", "no-such-espeak-ng")
    out = tmp_path / "out"
    code = main(["train", "--dataset", "speech-kws", "--train-size", "20", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "apt-get install espeak-ng" in err
    assert "Traceback" not in err and not out.exists()


def test_too_many_samples_name_the_bound(cache):
    with pytest.raises(ValueError, match=r"50000 \+ test_size=20000 = 70000.*60000.*min"):
        load_speech_kws(50_000, 20_000)


@pytest.mark.parametrize(
    ("train_size", "test_size", "bad"), [(0, 10, "train_size"), (10, -1, "test_size")]
)
def test_sizes_must_be_positive(cache, train_size, test_size, bad):
    with pytest.raises(ValueError, match=bad):
        load_speech_kws(train_size, test_size)


# ---------------------------------------------------------------------------- the signal path


def test_log_mel_puts_a_tone_in_its_band():
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    tones = torch.stack([torch.sin(2 * math.pi * f * t) for f in (300.0, 1000.0, 4000.0)])
    features = log_mel(tones)
    assert features.shape == (3, N_MELS, SPEECH_KWS_FRAMES)
    peaks = features[:, :, 50].argmax(1).tolist()  # the loudest band mid-way
    assert peaks[0] < peaks[1] < peaks[2]
    # The band whose centre is nearest to each tone, on the HTK mel scale.
    mel = 2595 * np.log10(1 + np.array([20.0, 8000.0]) / 700)
    centres = 700 * (10 ** (np.linspace(mel[0], mel[1], N_MELS + 2)[1:-1] / 2595) - 1)
    for f, peak in zip((300.0, 1000.0, 4000.0), peaks, strict=True):
        assert abs(peak - int(np.abs(centres - f).argmin())) <= 1
    # Silence is the floor, log(1e-6).
    assert torch.allclose(log_mel(torch.zeros(1, SAMPLE_RATE)), torch.tensor(math.log(1e-6)))


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = speech._resample(tone, 22050, SAMPLE_RATE)
    expected = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    assert len(out) == SAMPLE_RATE
    middle = slice(1600, -1600)  # away from the ends, where the padding tapers
    assert np.abs(out[middle] - expected[middle]).max() < 0.02


@needs_espeak
def test_an_utterance_is_trimmed_speech_at_unit_power():
    clip = speech._speak(shutil.which("espeak-ng"), "seven", "en-us+m1", 160, 50)
    assert clip.dtype == np.float32 and 0.2 * SAMPLE_RATE < len(clip) < SAMPLE_RATE
    assert abs(float(np.mean(clip**2)) - 1) < 1e-3
    # Slower speech is longer.
    slow = speech._speak(shutil.which("espeak-ng"), "seven", "en-us+m1", 130, 50)
    assert len(slow) > len(clip)


def test_words_are_the_speech_commands_core():
    assert len(SPEECH_KWS_WORDS) == len(set(SPEECH_KWS_WORDS)) == 20
    assert SPEECH_KWS_WORDS[10:] == (
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    )  # fmt: skip
