"""speech-kws: spoken keywords synthesised offline by espeak-ng, as log-mel features.

The 20 core words of the Speech Commands dataset (ten commands and the ten digits),
each spoken by espeak-ng in one of 8 English accents, one voice variant, one of 4
speeds and 5 pitches; trimmed, resampled to 16 kHz, placed at a random offset in a
1 s window, mixed with noise at a random SNR (white, pink, or babble made of other
utterances of the same split), and turned into log-mel features. The test set is
spoken by voice variants the training set never hears (:data:`TEST_VOICES`); the
accents are shared. As in the "Synthetic Speech Commands" set, many training samples
share their voice, speed and pitch: near-duplicates that differ in noise and offset.

Everything is drawn from a generator seeded per split, so a seed fixes the dataset
(with the same espeak-ng: its version is recorded in the cache), and a split does not
depend on the other's size. The result is cached under ``cache_dir() / "speech-kws"``
with a SHA-256 of its tensors; a damaged cache is named in a warning and generated
again. A cached dataset loads without espeak-ng.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import TensorDataset

from sievetrain.data.split import DataSplit, cached_split_problem
from sievetrain.files import cached
from sievetrain.options import as_int

__all__ = [
    "ACCENTS",
    "ESPEAK",
    "N_MELS",
    "SAMPLE_RATE",
    "SPEECH_KWS_FRAMES",
    "SPEECH_KWS_MAX_SAMPLES",
    "SPEECH_KWS_TEST_SIZE",
    "SPEECH_KWS_TRAIN_SIZE",
    "SPEECH_KWS_WORDS",
    "TEST_VOICES",
    "TRAIN_VOICES",
    "load_speech_kws",
    "log_mel",
    "speech_kws_plan",
]

# The 20 core words of Speech Commands v2; a label is the word's index here.
SPEECH_KWS_WORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
# espeak-ng's English voices (its mbrola voices need a separate package).
ACCENTS: tuple[str, ...] = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
    "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)  # fmt: skip
# Voice variants (timbre, pitch range, breathiness), 13 female or male and 5 of other
# kinds for training; the test set's 6 are heard only there.
TRAIN_VOICES: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f4", "klatt", "klatt2",
    "klatt3", "croak", "whisper", "grandpa", "antonio", "belinda",
)  # fmt: skip
TEST_VOICES: tuple[str, ...] = ("m7", "m8", "f5", "klatt4", "whisperf", "linda")
SPEEDS = (130, 160, 190, 220)  # words per minute (espeak-ng -s; its default is 175)
PITCHES = (30, 40, 50, 60, 70)  # espeak-ng -p, 0..99 (default 50)
SNR_DB = (0.0, 20.0)  # speech-to-noise ratio, drawn uniformly in this range
NOISES = ("white", "pink", "babble")  # drawn uniformly per sample
BABBLE_TALKERS = 4  # other utterances of the split summed into one babble noise
SAMPLE_RATE = 16_000  # Hz; every sample is 1 s long
N_MELS, N_FFT, WIN_LENGTH, HOP_LENGTH = 40, 512, 400, 160  # 25 ms windows every 10 ms
SPEECH_KWS_FRAMES = 1 + SAMPLE_RATE // HOP_LENGTH  # 101 frames per second
# Log-mel features are standardised by one mean and std (of a 2,000-sample training set),
# fixed here so that neither split depends on the other.
LOG_MEL_MEAN, LOG_MEL_STD = 2.5, 5.2
SPEECH_KWS_TRAIN_SIZE, SPEECH_KWS_TEST_SIZE = 16_000, 2_000
# One espeak-ng call per distinct utterance: about 9 ms of one core each, here. The
# bound keeps a generation under about 5 minutes on 2 cores and 1 GB of cached features.
SPEECH_KWS_MAX_SAMPLES = 60_000
ESPEAK = "espeak-ng"  # the program; tests point it at a missing one
_VERSION = "speech-kws-v1"  # bump when generation changes: old caches are then not found
_CHUNK = 500  # samples mixed and featurised at once (500 x 1 s float32 = 32 MB)


def load_speech_kws(
    train_size: int = SPEECH_KWS_TRAIN_SIZE,
    test_size: int = SPEECH_KWS_TEST_SIZE,
    *,
    seed: int = 0,
) -> DataSplit:
    """Generate speech-kws with espeak-ng, or load it from the cache.

    Args:
        train_size: Number of training samples, an int > 0 (each word ``1/20`` of them,
            the remainder to the first words).
        test_size: Number of test samples, an int > 0.
        seed: Generation seed.

    Returns:
        A split with ``x`` float32 ``(N, 40, 101)`` (standardised log-mel bands by
        10 ms frames) and ``y`` int64 ``(N,)`` in ``0..19`` (:data:`SPEECH_KWS_WORDS`).

    Raises:
        ValueError: A size is not an int > 0, their sum is above
            :data:`SPEECH_KWS_MAX_SAMPLES`, espeak-ng is not installed (the message
            says how to install it), or espeak-ng fails on an utterance.
    """
    train_size, test_size = as_int("train_size", train_size, 1), as_int("test_size", test_size, 1)
    seed = as_int("seed", seed, 0)
    if train_size + test_size > SPEECH_KWS_MAX_SAMPLES:
        raise ValueError(
            f"train_size={train_size} + test_size={test_size} = {train_size + test_size} "
            f"speech-kws samples is more than SPEECH_KWS_MAX_SAMPLES={SPEECH_KWS_MAX_SAMPLES} "
            f"(about {(train_size + test_size) * 0.009 / 120:.0f} min of espeak-ng on 2 cores "
            f"and {(train_size + test_size) * N_MELS * SPEECH_KWS_FRAMES * 4 / 1e9:.1f} GB)"
        )
    tensors = cached(
        "speech-kws",
        (_VERSION, train_size, test_size, seed),
        "speech-kws",
        lambda content: _cache_problem(content, train_size, test_size),
        lambda: _make_speech_kws(train_size, test_size, seed),
    )
    x, y, x_test, y_test = (tensors[k] for k in ("x", "y", "x_test", "y_test"))
    return DataSplit(
        "speech-kws",
        TensorDataset(x, y),
        TensorDataset(x_test, y_test),
        len(SPEECH_KWS_WORDS),
        tuple(x.shape[1:]),
    )


def _make_speech_kws(train_size: int, test_size: int, seed: int) -> dict[str, object]:
    """Both splits, the espeak-ng version that spoke them and their SHA-256."""
    espeak = _find_espeak()
    tensors: dict[str, object] = {"espeak_version": _espeak_version(espeak)}
    for name, size, index in (("", train_size, 0), ("_test", test_size, 1)):
        tensors["x" + name], tensors["y" + name] = _make_split(espeak, size, seed, index)
    tensors["sha256"] = _checksum(tensors)
    return tensors


def speech_kws_plan(size: int, seed: int, split: str) -> dict[str, torch.Tensor]:
    """What each of a split's ``size`` utterances is: int64 ``(size,)`` tensors ``word``
    (the label), ``accent``, ``voice``, ``speed`` and ``pitch``, indices into
    :data:`SPEECH_KWS_WORDS`, :data:`ACCENTS`, the split's voices (:data:`TRAIN_VOICES`
    or :data:`TEST_VOICES`), ``SPEEDS`` and ``PITCHES``. Words are balanced; the rest
    is drawn uniformly from the split's generator (its first draws)."""
    index = ("train", "test").index(split)
    return _plan(size, _generator(seed, index), (TRAIN_VOICES, TEST_VOICES)[index])


def _generator(seed: int, split_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(2 * seed + split_index)


def _plan(size: int, g: torch.Generator, voices: tuple[str, ...]) -> dict[str, torch.Tensor]:
    plan = {"word": torch.randperm(size, generator=g) % len(SPEECH_KWS_WORDS)}
    for name, n in (
        ("accent", len(ACCENTS)),
        ("voice", len(voices)),
        ("speed", len(SPEEDS)),
        ("pitch", len(PITCHES)),
    ):
        plan[name] = torch.randint(n, (size,), generator=g)
    return plan


def _utterances(plan: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plan as rows ``(word, accent, voice, speed, pitch)``, one per sample."""
    return torch.stack([plan[k] for k in ("word", "accent", "voice", "speed", "pitch")], 1)


def _make_split(
    espeak: str, size: int, seed: int, split_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's standardised log-mel features and labels."""
    g, voices = _generator(seed, split_index), (TRAIN_VOICES, TEST_VOICES)[split_index]
    plan = _plan(size, g, voices)
    # One espeak-ng call per distinct utterance; `which` maps each sample to its clip.
    unique, which = torch.unique(_utterances(plan), dim=0, return_inverse=True)
    calls = [
        (SPEECH_KWS_WORDS[w], f"{ACCENTS[a]}+{voices[v]}", SPEEDS[s], PITCHES[p])
        for w, a, v, s, p in unique.tolist()
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # each call a process
        clips = list(pool.map(lambda call: _speak(espeak, *call), calls))
    features = [
        _featurise(_mix(clips, which[start : start + _CHUNK].tolist(), g))
        for start in range(0, size, _CHUNK)
    ]
    return torch.cat(features), plan["word"]


def _find_espeak() -> str:
    espeak = shutil.which(ESPEAK)
    if espeak is None:
        raise ValueError(
            f"speech-kws is spoken by espeak-ng, and {ESPEAK!r} is not on PATH: install it "
            "(Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng)"
        )
    return espeak


def _espeak_version(espeak: str) -> str:
    return subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()


def _speak(espeak: str, word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One utterance: float32 at 16 kHz, silence trimmed, RMS 1, at most 1 s."""
    command = [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    result = subprocess.run(command, capture_output=True)
    wav = result.stdout
    start = wav.find(b"data") + 8  # the sample data follows the RIFF "data" chunk header
    if result.returncode != 0 or wav[:4] != b"RIFF" or start < 8 or len(wav) - start < 200:
        raise ValueError(
            f"espeak-ng failed to speak {word!r} as {voice!r} (exit code {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip() or 'no audio'}"
        )
    rate = int.from_bytes(wav[24:28], "little")
    audio = np.frombuffer(wav[start : start + (len(wav) - start) // 2 * 2], "<i2")
    audio = audio.astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    audio = _resample(audio[loud[0] : loud[-1] + 1], rate, SAMPLE_RATE)[:SAMPLE_RATE]
    return audio / np.sqrt(np.mean(audio**2))


def _resample(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """``audio`` at ``new_rate`` by cutting (or padding) its spectrum: exact for a signal
    band-limited below both Nyquist frequencies, and the clip is padded with silence
    first, so the FFT's wrap-around joins silence to silence."""
    padded = np.pad(audio, rate // 50)  # 20 ms each side: 441 and 320 samples exactly
    n = round(len(padded) * new_rate / rate)
    spectrum = np.fft.rfft(padded)[: n // 2 + 1]
    out = np.fft.irfft(spectrum, n) * (n / len(padded))
    start = round(rate // 50 * new_rate / rate)
    return out[start : start + round(len(audio) * new_rate / rate)].astype(np.float32)


def _mix(clips: list[np.ndarray], which: list[int], g: torch.Generator) -> torch.Tensor:
    """1 s waveforms ``(len(which), 16000)``: each clip ``which[i]`` at a random offset,
    plus noise of a random kind at a random SNR (draws in a fixed order from ``g``)."""
    n = len(which)
    out = torch.zeros(n, SAMPLE_RATE)
    offsets = torch.rand(n, generator=g)
    kinds = torch.randint(len(NOISES), (n,), generator=g)
    snr = SNR_DB[0] + (SNR_DB[1] - SNR_DB[0]) * torch.rand(n, generator=g)
    noise = torch.randn(n, SAMPLE_RATE, generator=g)
    talkers = torch.randint(len(clips), (n, BABBLE_TALKERS), generator=g)
    talker_offsets = torch.rand(n, BABBLE_TALKERS, generator=g)
    pink = torch.fft.irfft(
        torch.fft.rfft(noise) / torch.arange(SAMPLE_RATE // 2 + 1).clamp(min=1).sqrt(),
        SAMPLE_RATE,
    )
    for i, clip in enumerate(which):
        _place(out[i], clips[clip], float(offsets[i]))
        kind = NOISES[int(kinds[i])]
        if kind == "babble":
            babble = torch.zeros(SAMPLE_RATE)
            for talker, offset in zip(talkers[i].tolist(), talker_offsets[i].tolist(), strict=True):
                _place(babble, clips[talker], offset)
            background = babble
        else:
            background = noise[i] if kind == "white" else pink[i]
        # Speech power over the clip itself (RMS 1), noise power over the whole second.
        scale = math.sqrt(1.0 / (background.pow(2).mean().item() * 10 ** (snr[i].item() / 10)))
        out[i] += background * scale
    return out


def _place(into: torch.Tensor, clip: np.ndarray, offset: float) -> None:
    """Add ``clip`` into ``into`` starting ``offset`` (0..1) of the way through the room left."""
    start = int(offset * (len(into) - len(clip)))
    into[start : start + len(clip)] += torch.from_numpy(clip)


def log_mel(waveforms: torch.Tensor) -> torch.Tensor:
    """Log-mel features ``(B, 40, 101)`` of 1 s waveforms ``(B, 16000)`` at 16 kHz: a
    Hann window of 25 ms every 10 ms, 40 triangular mel bands from 20 Hz to 8 kHz
    (HTK mel scale), natural log of the power plus 1e-6."""
    spectrum = torch.stft(
        waveforms,
        N_FFT,
        HOP_LENGTH,
        WIN_LENGTH,
        torch.hann_window(WIN_LENGTH),
        center=True,
        return_complex=True,
    )
    return torch.log(_mel_filterbank() @ spectrum.abs().pow(2) + 1e-6)


def _mel_filterbank() -> torch.Tensor:
    """Triangular filters ``(N_MELS, N_FFT // 2 + 1)`` evenly spaced in mel."""

    def mel(hz: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    edges = torch.linspace(20.0, SAMPLE_RATE / 2, 2).to(torch.float64)
    points = torch.linspace(*mel(edges).tolist(), N_MELS + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (points / 2595.0) - 1.0)
    bins = torch.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1, dtype=torch.float64)
    left, center, right = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising, falling = (bins - left) / (center - left), (right - bins) / (right - center)
    return torch.minimum(rising, falling).clamp(min=0).float()


def _featurise(waveforms: torch.Tensor) -> torch.Tensor:
    return (log_mel(waveforms) - LOG_MEL_MEAN) / LOG_MEL_STD


def _checksum(tensors: dict[str, object]) -> str:
    digest = hashlib.sha256()
    for key in ("x", "y", "x_test", "y_test"):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cache_problem(tensors: object, train_size: int, test_size: int) -> str | None:
    """What makes ``tensors`` differ from what :func:`load_speech_kws` writes, or ``None``."""
    shape = (N_MELS, SPEECH_KWS_FRAMES)
    problem = cached_split_problem(
        tensors, train_size, test_size, shape, ("sha256", "espeak_version")
    )
    if problem is None and _checksum(tensors) != tensors["sha256"]:
        problem = f"does not match its SHA-256 {str(tensors['sha256'])[:16]}..."
    return problem
