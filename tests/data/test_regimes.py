"""Data regimes: label noise, duplicates, long tail and off-target text on the training
split only, exact in what they promise, deterministic, and refusing what cannot work."""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from sievetrain.data import (
    CONFUSION_PAIRS,
    IGNORE_INDEX,
    REGIMES,
    DataSplit,
    Duplicates,
    LabelNoise,
    LongTail,
    OffTarget,
    apply_regimes,
    duplicate_sources,
    format_regime,
    load_fashion_mnist,
    load_shakespeare,
    long_tail_indices,
    long_tail_sizes,
    mix_off_target,
    noisy_labels,
    off_target_sequences,
    parse_regime,
    shift,
)
from sievetrain.data.shakespeare import MASK_ID, PAD_ID
from sievetrain.options import ArgumentError

CLI_FLAGS = {name: "--" + name.replace("_", "-") for name in REGIMES}


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _within_sigmas(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """``count`` is within ``sigmas`` binomial(n, p) standard deviations of n·p."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def _images(n: int = 2000, num_classes: int = 10, name: str = "fashion-mnist") -> DataSplit:
    """Random images ``(N, 1, 8, 8)`` (all distinct), labels ``i % C``, and a test part."""
    g = _generator(1)
    train = TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % num_classes)
    test = TensorDataset(torch.randn(50, 1, 8, 8, generator=g), torch.arange(50) % num_classes)
    return DataSplit(name, train, test, num_classes, (1, 8, 8))


def _find_shifted(sample: torch.Tensor, clean: torch.Tensor, jitter: int) -> tuple[int, tuple]:
    """The clean row that ``sample`` is, rolled by offsets of at most ``jitter`` per dim."""
    dims = tuple(range(-(sample.dim() - 1), 0)) if sample.dim() == 3 else (-1,)
    rows = {clean[i].numpy().tobytes(): i for i in range(len(clean))}
    ranges = [range(-jitter, jitter + 1)] * len(dims)
    for offset in _product(ranges):
        back = torch.roll(sample, tuple(-o for o in offset), dims)
        if back.numpy().tobytes() in rows:
            return rows[back.numpy().tobytes()], offset
    raise AssertionError("a duplicate that is no clean sample rolled by at most the jitter")


def _product(ranges: list[range]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for r in ranges:
        out = [(*prefix, o) for prefix in out for o in r]
    return out


# ---------------------------------------------------------------------------- label noise


def test_symmetric_noise_flips_at_the_rate_to_uniform_other_classes():
    n, c, p = 20_000, 10, 0.3
    y = torch.arange(n) % c
    labels, noisy = noisy_labels(y, p, c, generator=_generator())
    assert labels.dtype == torch.int64 and noisy.dtype == torch.bool
    assert _within_sigmas(int(noisy.sum()), n, p)
    assert (labels[noisy] != y[noisy]).all() and (labels[~noisy] == y[~noisy]).all()
    # Uniform over the other C - 1 classes: each step (new - old) % C in 1..9 equally often.
    steps = torch.bincount((labels[noisy] - y[noisy]) % c, minlength=c)
    flipped = int(noisy.sum())
    assert steps[0] == 0
    assert all(_within_sigmas(int(s), flipped, 1 / (c - 1)) for s in steps[1:])


@pytest.mark.parametrize("dataset", sorted(CONFUSION_PAIRS))
def test_confusion_noise_flips_each_label_to_its_partner(dataset):
    pairs = CONFUSION_PAIRS[dataset]
    c = 2 * len(pairs)
    assert sorted(k for pair in pairs for k in pair) == list(range(c))  # each class once
    partner = dict(pairs) | {b: a for a, b in pairs}
    n, p = 10_000, 0.2
    y = torch.arange(n) % c
    labels, noisy = noisy_labels(y, p, c, generator=_generator(), kind="confusion", pairs=pairs)
    assert _within_sigmas(int(noisy.sum()), n, p)
    assert labels[noisy].tolist() == [partner[c] for c in y[noisy].tolist()]
    assert (labels[~noisy] == y[~noisy]).all()


def test_mnist1d_pairs_are_its_closest_templates():
    """The pairing of least total squared distance between MNIST-1D's digit templates."""
    from mnist1d.data import get_templates

    x = torch.as_tensor(get_templates()["x"])  # (10, 12)
    distance = torch.cdist(x, x) ** 2

    def pairings(classes: list[int]) -> list[list[tuple[int, int]]]:
        if not classes:
            return [[]]
        first, rest = classes[0], classes[1:]
        return [
            [(first, other), *more]
            for i, other in enumerate(rest)
            for more in pairings(rest[:i] + rest[i + 1 :])
        ]

    every = pairings(list(range(10)))
    assert len(every) == 945
    best = min(every, key=lambda pairs: sum(float(distance[a, b]) for a, b in pairs))
    assert sorted(best) == sorted(CONFUSION_PAIRS["mnist1d"])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_speech_kws_pairs_are_the_words_closest_in_phonemes():
    """The pairing of least total phoneme edit distance of the 20 keywords (a search over
    the pairings of the lowest unpaired word, memoised on the set of words paired)."""
    from sievetrain.data import SPEECH_KWS_WORDS

    phonemes = [
        subprocess.run(
            ["espeak-ng", "-q", "--ipa", "-v", "en-us", word], capture_output=True, text=True
        )
        .stdout.strip()
        .replace("ˈ", "")
        .replace("ˌ", "")
        for word in SPEECH_KWS_WORDS
    ]
    assert phonemes[:2] == ["jɛs", "noʊ"]

    def distance(a: str, b: str) -> float:  # Levenshtein, over the longer length
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            previous, row[0] = row[:], i
            for j, cb in enumerate(b, 1):
                row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ca != cb))
        return row[-1] / max(len(a), len(b))

    n = len(phonemes)

    @functools.cache
    def best(paired: int) -> tuple[float, tuple[tuple[int, int], ...]]:
        if paired == (1 << n) - 1:
            return 0.0, ()
        first = next(k for k in range(n) if not paired >> k & 1)
        options = []
        for other in range(first + 1, n):
            if not paired >> other & 1:
                cost, rest = best(paired | 1 << first | 1 << other)
                options.append(
                    (cost + distance(phonemes[first], phonemes[other]), ((first, other), *rest))
                )
        return min(options)

    assert sorted(best(0)[1]) == sorted(CONFUSION_PAIRS["speech-kws"])


def test_noise_at_rate_zero_changes_nothing():
    y = torch.arange(100) % 10
    labels, noisy = noisy_labels(y, 0.0, 10, generator=_generator())
    assert torch.equal(labels, y) and not noisy.any()


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (((0, 1), (2, 3)), r"no partner to classes \[4, 5\]"),
        (((0, 1), (1, 2), (3, 4), (5, 5)), "class 1 has more than one partner"),
        (((0, 1), (2, 3), (4, 6)), "class 6 is not in 0..5"),
    ],
)
def test_confusion_pairs_must_pair_every_class_once(pairs, match):
    y = torch.arange(12) % 6
    with pytest.raises(ValueError, match=match):
        noisy_labels(y, 0.5, 6, generator=_generator(), kind="confusion", pairs=pairs)


# ---------------------------------------------------------------------------- duplicates


def test_duplicate_sources_copy_k_items_m_times():
    n, k, m = 1000, 30, 5
    source, duplicate, copy = duplicate_sources(n, k, m, generator=_generator())
    assert source.shape == duplicate.shape == copy.shape == (n,)
    counts = torch.bincount(source, minlength=n)
    originals = (counts == m).nonzero().squeeze(1)
    assert len(originals) == k and set(counts.tolist()) == {0, 1, m}
    assert (source[originals] == originals).all()  # an original keeps its place
    assert int(duplicate.sum()) == k * m and int(copy.sum()) == k * (m - 1)
    assert torch.equal(duplicate, torch.isin(source, originals))
    assert torch.equal(copy, source != torch.arange(n))
    assert (copy <= duplicate).all()


@given(st.integers(2, 300), st.integers(1, 20), st.integers(2, 20), st.integers(0, 2**32))
def test_duplicate_sources_properties(n, k, m, seed):
    assume(k * m <= n)
    source, duplicate, copy = duplicate_sources(n, k, m, generator=_generator(seed))
    counts = torch.bincount(source, minlength=n)
    assert int((counts == m).sum()) == k and int(duplicate.sum()) == k * m
    assert torch.equal(copy, source != torch.arange(n))


def test_duplicate_sources_refuse_more_copies_than_samples():
    with pytest.raises(ValueError, match=r"K·M = 30·5 = 150 is more than n = 100"):
        duplicate_sources(100, 30, 5, generator=_generator())


def test_shift_rolls_each_sample_by_its_own_offsets():
    x = torch.randn(6, 1, 5, 7, generator=_generator())
    offsets = torch.tensor([[0, 0], [1, -2], [-3, 6], [4, 1], [-1, -1], [2, 0]])
    expected = [torch.roll(x[i], tuple(offsets[i].tolist()), (-2, -1)) for i in range(6)]
    assert torch.equal(shift(x, offsets), torch.stack(expected))
    tokens = torch.arange(24).view(3, 8)
    one = torch.tensor([[1], [0], [-2]])
    assert torch.equal(shift(tokens, one)[0], torch.roll(tokens[0], 1))
    assert torch.equal(shift(tokens, one)[2], torch.roll(tokens[2], -2))


@pytest.mark.parametrize("jitter", [0, 2])
def test_duplicates_are_exact_in_count_and_jitter_bounded(jitter):
    data, (k, m) = _images(500), (12, 4)
    clean = data.train.tensors[0]
    out = apply_regimes(data, {"duplicates": Duplicates(k, copies=m, jitter=jitter)}, seed=3)
    x, y = out.train.tensors
    flagged = out.flags["duplicate"]
    assert len(x) == len(clean) and int(flagged.sum()) == k * m
    assert torch.equal(x[~flagged], clean[~flagged])  # the rest untouched
    found = [_find_shifted(x[i], clean, jitter) for i in flagged.nonzero().squeeze(1).tolist()]
    sources = [s for s, _ in found]
    assert len(set(sources)) == k and all(sources.count(s) == m for s in sources)
    assert all(
        y[i] == data.train.tensors[1][s]
        for i, s in zip(flagged.nonzero().squeeze(1).tolist(), sources, strict=True)
    )
    offsets = [o for _, o in found]
    assert all(abs(o) <= jitter for offset in offsets for o in offset)
    # The originals stay where they were, unshifted; the copies move when J > 0.
    assert sum(offset == (0, 0) for offset in offsets) >= k
    if jitter:
        assert sum(offset != (0, 0) for offset in offsets) > k * (m - 1) // 2
    assert out.regimes == {
        "data_seed": 3,
        "duplicates": {"items": k, "copies": m, "jitter": jitter},
    }


# ---------------------------------------------------------------------------- long tail


def test_long_tail_sizes_fall_geometrically():
    assert long_tail_sizes(6000, 10, 10) == [
        math.floor(6000 * 10 ** (-c / 9) + 1e-9) for c in range(10)
    ]
    assert long_tail_sizes(6000, 3, 2) == [6000, 2000]  # 6000 * 3**-1 is 1999.99...
    assert long_tail_sizes(100, 1, 4) == [100] * 4
    assert long_tail_sizes(5, 1000, 3) == [5, 1, 1]  # never below one sample
    with pytest.raises(ValueError, match="ratio=0.5"):
        long_tail_sizes(10, 0.5, 3)


def test_long_tail_keeps_a_random_subset_of_each_class():
    y = torch.randint(0, 5, (3000,), generator=_generator())
    kept = long_tail_indices(y, 8.0, 5, generator=_generator(1))
    assert torch.equal(kept, kept.unique())  # sorted, no repeats
    sizes = long_tail_sizes(int(torch.bincount(y).min()), 8.0, 5)
    assert torch.bincount(y[kept], minlength=5).tolist() == sizes
    with pytest.raises(ValueError, match="every class"):
        long_tail_indices(torch.tensor([0, 0, 2]), 2.0, 3, generator=_generator())


def test_long_tail_changes_only_the_training_split():
    data = _images(2000)
    out = apply_regimes(data, {"long_tail": LongTail(ratio=10)})
    sizes = long_tail_sizes(200, 10, 10)
    assert torch.bincount(out.train.tensors[1], minlength=10).tolist() == sizes
    assert out.regimes["long_tail"] == {"ratio": 10.0, "class_sizes": sizes}
    assert out.test is data.test
    assert out.flags == {}  # long tail drops samples; what is left is clean


# ---------------------------------------------------------------------------- off-target


def test_off_target_text_is_the_standard_library_source():
    tokens, source = off_target_sequences(64)
    files = [p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py")]
    assert tokens.dtype == torch.int64 and tokens.shape[1] == 64
    assert source["text"] == "python-stdlib" and source["files"] == len(files)
    assert len(source["sha256"]) == 64 and source["characters"] > 1_000_000
    assert off_target_sequences(64)[1] == source  # cached, and the same


def test_mix_off_target_replaces_exactly_round_f_n_rows():
    n, t = 1001, 32
    inputs = torch.randint(3, 99, (n, t), generator=_generator())
    targets = torch.full((n, t), IGNORE_INDEX)
    new_inputs, new_targets, off = mix_off_target(
        inputs, targets, 0.25, seq_len=t, generator=_generator(), seed=0
    )
    assert int(off.sum()) == round(0.25 * n)
    assert torch.equal(new_inputs[~off], inputs[~off])
    assert torch.equal(new_targets[~off], targets[~off])
    assert not torch.equal(new_inputs[off], inputs[off])
    with pytest.raises(ValueError, match="seq_len=16"):
        mix_off_target(inputs, targets, 0.25, seq_len=16, generator=_generator(), seed=0)


@pytest.fixture(scope="module")
def shakespeare() -> DataSplit:
    return load_shakespeare(train_size=2000, test_size=100)


def test_off_target_on_shakespeare_masks_like_shakespeare(shakespeare):
    out = apply_regimes(shakespeare, {"off_target": OffTarget(0.3)}, seed=1)
    off = out.flags["off_target"]
    assert int(off.sum()) == 600  # round(0.3 * 2000), exactly
    (x, y), (x0, y0) = out.train.tensors, shakespeare.train.tensors
    assert torch.equal(x[~off], x0[~off]) and torch.equal(y[~off], y0[~off])
    assert out.test is shakespeare.test
    # Replaced rows are off-target chunks, unmasked as a Shakespeare row would be ...
    originals = torch.where(y != IGNORE_INDEX, y, x)  # (N, T)
    pool, source = off_target_sequences(x.shape[1])
    chunks = {row.numpy().tobytes() for row in pool}
    assert all(originals[i].numpy().tobytes() in chunks for i in off.nonzero().squeeze(1))
    # ... and masked in the same way: 15% of non-PAD positions, 80% of those MASK.
    real = originals[off] != PAD_ID
    selected = (y[off] != IGNORE_INDEX) & real
    assert _within_sigmas(int(selected.sum()), int(real.sum()), 0.15)
    assert _within_sigmas(int((x[off][selected] == MASK_ID).sum()), int(selected.sum()), 0.8)
    assert out.regimes["off_target"] == {"fraction": 0.3, "source": source}
    json.dumps(out.regimes)


def test_duplicates_on_tokens_roll_targets_with_inputs(shakespeare):
    out = apply_regimes(shakespeare, {"duplicates": Duplicates(10, copies=3, jitter=5)})
    (x, y), (x0, y0) = out.train.tensors, shakespeare.train.tensors
    pairs = torch.cat([x0, y0], dim=1).view(len(x0), 2, -1)  # (N, 2, T): roll both together
    for i in out.flags["duplicate"].nonzero().squeeze(1).tolist():
        _find_shifted(torch.stack([x[i], y[i]]), pairs, 5)


# ---------------------------------------------------------------------------- all together


def test_regimes_on_fashion_mnist(fashion_mnist_dir):
    data = load_fashion_mnist(train_size=6000, test_size=100)
    regimes = {
        "label_noise": LabelNoise(0.2, kind="confusion"),
        "duplicates": Duplicates(50, copies=5, jitter=1),
        "long_tail": LongTail(4),
    }
    out = apply_regimes(data, regimes, seed=7)
    x, y = out.train.tensors
    sizes = out.regimes["long_tail"]["class_sizes"]
    assert len(x) == len(y) == sum(sizes) and sizes[0] == 4 * sizes[-1]
    assert set(out.flags) == {"noisy", "duplicate"}
    assert int(out.flags["duplicate"].sum()) == 250
    noisy = out.flags["noisy"]
    assert _within_sigmas(int(noisy.sum()), len(y), 0.2)
    assert out.regimes["label_noise"]["pairs"] == [
        list(p) for p in CONFUSION_PAIRS["fashion-mnist"]
    ]
    assert out.test is data.test
    assert json.loads(json.dumps(out.regimes)) == out.regimes


def test_same_seed_same_data_other_seed_other_data():
    data = _images(1000)
    regimes = {"label_noise": LabelNoise(0.3), "duplicates": Duplicates(20, jitter=1)}
    a, b = apply_regimes(data, regimes, seed=0), apply_regimes(data, regimes, seed=0)
    c = apply_regimes(data, regimes, seed=1)
    for t, u in zip(a.train.tensors, b.train.tensors, strict=True):
        assert torch.equal(t, u)
    assert all(torch.equal(a.flags[f], b.flags[f]) for f in a.flags)
    assert not torch.equal(a.train.tensors[1], c.train.tensors[1])
    assert not torch.equal(a.flags["duplicate"], c.flags["duplicate"])


def test_existing_flags_follow_their_samples():
    data = _images(1000)
    marked = torch.arange(1000) % 3 == 0
    data = DataSplit(data.name, data.train, data.test, 10, (1, 8, 8), flags={"marked": marked})
    regimes = {"long_tail": LongTail(2), "duplicates": Duplicates(40, copies=4)}
    out = apply_regimes(data, regimes)
    clean = data.train.tensors[0]
    rows = {clean[i].numpy().tobytes(): i for i in range(len(clean))}
    where = torch.tensor([rows[x.numpy().tobytes()] for x in out.train.tensors[0]])
    assert torch.equal(out.flags["marked"], marked[where])


def test_no_regimes_return_the_data_itself():
    data = _images(100)
    assert apply_regimes(data, {}) is data


# ---------------------------------------------------------------------------- text and errors


def test_parse_regime_grammar():
    assert parse_regime("label_noise", "0.3/kind=confusion") == LabelNoise(0.3, "confusion")
    assert parse_regime("duplicates", "300/copies=50/jitter=2") == Duplicates(300, 50, 2)
    assert parse_regime("long_tail", "10") == LongTail(10.0)
    assert parse_regime("off_target", "0.1") == OffTarget(0.1)
    for name, text in [
        ("duplicates", "300/copies=50"),
        ("label_noise", "0.3"),
        ("long_tail", "2.5"),
    ]:
        options = parse_regime(name, text)
        assert format_regime(name, options) == text
        assert isinstance(options, REGIMES[name][0])


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("label_noise", "1", r"invalid rate=1.0: must be in \(0, 1\)"),
        ("label_noise", "1.5", "rate=1.5"),
        ("label_noise", "0", "rate=0.0"),
        ("label_noise", "0.2/kind=foo", "'foo'"),
        ("label_noise", "0.2/seed=3", "unknown option 'seed'; its options: rate, kind"),
        ("label_noise", "0.2/kind", "expected KEY=VALUE"),
        ("duplicates", "many", "invalid items='many'"),
        ("duplicates", "3/copies=1", "copies=1"),
        ("duplicates", "3/jitter=-1", "jitter=-1"),
        ("long_tail", "0.5", "ratio=0.5"),
        ("off_target", "1", "fraction=1.0"),
        ("label_noise", "", "VALUE being the rate"),
    ],
)
def test_parse_regime_names_the_bad_value(name, text, match):
    with pytest.raises(ValueError, match=match) as error:
        parse_regime(name, text)
    flag = CLI_FLAGS[name]
    assert error.value.render(CLI_FLAGS).startswith(f"{flag} {text or repr('')}: ")


def test_unknown_regime():
    with pytest.raises(ValueError, match="unknown regime 'noise'; known: long_tail"):
        parse_regime("noise", "0.1")
    with pytest.raises(ValueError, match="unknown regime 'noise'"):
        apply_regimes(_images(100), {"noise": LabelNoise(0.1)})


def test_more_copies_than_samples_after_the_long_tail():
    data = _images(10_000)
    with pytest.raises(ArgumentError) as error:
        apply_regimes(data, {"duplicates": parse_regime("duplicates", "300/copies=50")})
    assert error.value.render(CLI_FLAGS) == (
        "--duplicates 300/copies=50: K·M = 15000 is more than the 10000 training samples"
    )
    regimes = {"long_tail": LongTail(10), "duplicates": Duplicates(300, copies=20)}
    with pytest.raises(ValueError, match=r"K·M = 6000 is more than the \d+ training"):
        apply_regimes(data, regimes)  # 6000 < 10000, but the long tail keeps fewer


def test_regimes_refuse_data_they_do_not_fit(shakespeare):
    with pytest.raises(ArgumentError, match="shakespeare has token targets") as error:
        apply_regimes(shakespeare, {"label_noise": LabelNoise(0.1)})
    assert error.value.render(CLI_FLAGS).startswith("--label-noise 0.1: ")
    with pytest.raises(ValueError, match="long_tail 2: shakespeare has token targets"):
        apply_regimes(shakespeare, {"long_tail": LongTail(2)})
    with pytest.raises(ValueError, match="off_target 0.1: .* not mnist1d"):
        apply_regimes(_images(100, name="mnist1d"), {"off_target": OffTarget(0.1)})
    with pytest.raises(ValueError, match="kind=confusion: no confusion pairs for toy"):
        apply_regimes(_images(100, name="toy"), {"label_noise": LabelNoise(0.1, "confusion")})
    with pytest.raises(ValueError, match="takes LabelNoise"):
        apply_regimes(_images(100), {"label_noise": LongTail(2)})
    noisy = apply_regimes(_images(100), {"label_noise": LabelNoise(0.1)})
    with pytest.raises(ValueError, match="already has regimes"):
        apply_regimes(noisy, {"duplicates": Duplicates(2)})
