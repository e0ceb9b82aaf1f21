"""Shakespeare masked-LM data: vocabulary, cleaning, split by play, BERT masking."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sievetrain.data import load_dataset
from sievetrain.data.shakespeare import (
    IGNORE_INDEX,
    MASK_ID,
    PAD_ID,
    UNK_ID,
    VOCAB_SIZE,
    chunk_tokens,
    clean_play,
    decode,
    encode,
    load_shakespeare,
    mask_tokens,
    play_paths,
    split_plays,
)

FIRST_CHAR_ID = 3  # ids 3 .. VOCAB_SIZE - 1 are ordinary characters


@pytest.fixture(scope="module")
def split():
    return load_shakespeare()


@pytest.fixture(scope="module")
def texts() -> dict:
    """Play path -> cleaned text, for every play."""
    return {p: clean_play(p.read_text(encoding="utf-8")) for p in play_paths()}


def _originals(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The unmasked tokens: the target where there is one, else the input."""
    return torch.where(targets != IGNORE_INDEX, targets, inputs)


def _within_sigmas(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# ---------------------------------------------------------------------------- vocabulary, text


def test_vocabulary_is_fixed():
    assert (PAD_ID, MASK_ID, UNK_ID, IGNORE_INDEX, VOCAB_SIZE) == (0, 1, 2, -100, 99)
    assert encode("\n").tolist() == [3]
    assert encode(" ~").tolist() == [4, VOCAB_SIZE - 1]
    # Outside the vocabulary: a tab, DEL, an em dash, a non-BMP character.
    assert encode("\t\x7f\u2014\U0001f600").tolist() == [UNK_ID] * 4


def test_real_text_round_trips(texts):
    text = texts[play_paths()[0]][:20_000]
    ids = encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),)
    assert ids.min() >= FIRST_CHAR_ID  # all in the vocabulary: no UNK, no specials
    assert decode(ids) == text


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="-100"):
        decode(torch.tensor([5, IGNORE_INDEX]))


def test_cleaning_drops_markdown_and_keeps_the_words(texts):
    markdown = (
        "# Hamlet\n\n## ACT I\n\n\n_Enter Ghost_\n\n**HAMLET**  \nTo be, or not\\--  \nthat.\n"
    )
    assert (
        clean_play(markdown) == "Hamlet\n\nACT I\n\nEnter Ghost\n\nHAMLET\nTo be, or not--\nthat.\n"
    )
    for text in texts.values():
        assert not any(mark in text for mark in ("*", "_", "\\", " \n", "\n\n\n", "\n#"))


# ---------------------------------------------------------------------------- split by play


def test_plays_split_by_sorted_position():
    paths = play_paths()
    train, val = split_plays(paths)
    assert len(paths) == 38 and paths == sorted(paths)
    assert val == [p for i, p in enumerate(paths) if i % 8 == 7] and len(val) == 4
    assert set(train).isdisjoint(val) and sorted(train + val) == paths


def test_train_and_validation_sequences_come_from_disjoint_plays(split, texts):
    train_plays, val_plays = split_plays(play_paths())
    weights = torch.randint(-(2**62), 2**62, (128,), generator=torch.Generator().manual_seed(0))

    def keys(rows: torch.Tensor) -> set[int]:
        """A 64-bit hash per row (int64 wraps around): equal rows, equal keys."""
        return set((rows * weights).sum(dim=1).tolist())

    def chunks(plays) -> set[int]:
        return keys(torch.cat([chunk_tokens(encode(texts[p]), 128) for p in plays]))

    train_chunks, val_chunks = chunks(train_plays), chunks(val_plays)
    assert train_chunks.isdisjoint(val_chunks)
    assert keys(_originals(*split.train.tensors)) == train_chunks
    assert keys(_originals(*split.test.tensors)) == val_chunks


@pytest.mark.parametrize("length", [0, 1, 127, 128, 129, 1000])
def test_chunks_are_padded_only_at_the_end(length):
    ids = torch.arange(length) % (VOCAB_SIZE - FIRST_CHAR_ID) + FIRST_CHAR_ID
    chunks = chunk_tokens(ids, 128)
    assert chunks.shape == (math.ceil(length / 128), 128)
    assert torch.equal(chunks.reshape(-1)[:length], ids)
    assert (chunks.reshape(-1)[length:] == PAD_ID).all()


# ---------------------------------------------------------------------------- dataset


def test_layout(split):
    assert (split.name, split.num_classes, split.input_shape) == ("shakespeare", VOCAB_SIZE, (128,))
    for part in (split.train, split.test):
        for t in part.tensors:
            assert t.dtype == torch.int64 and t.shape[1:] == (128,)
    assert len(split.train) > 30_000 and 3_000 < len(split.test) < len(split.train) // 5


def test_masking_rate_on_real_data(split):
    inputs, targets = split.train.tensors
    selected = targets != IGNORE_INDEX
    non_pad = int((_originals(inputs, targets) != PAD_ID).sum())
    assert _within_sigmas(int(selected.sum()), non_pad, 0.15)


def test_pad_is_never_selected(split):
    for inputs, targets in (split.train.tensors, split.test.tensors):
        pad = _originals(inputs, targets) == PAD_ID
        assert pad.any()  # the last chunk of each play
        assert (inputs[pad] == PAD_ID).all() and (targets[pad] == IGNORE_INDEX).all()


def test_80_10_10_split_of_selected_tokens(split):
    inputs, targets = split.train.tensors
    selected = targets != IGNORE_INDEX
    x, y, n = inputs[selected], targets[selected], int(selected.sum())
    masked = x == MASK_ID
    replaced = ~masked & (x != y)
    kept = x == y
    # A random replacement draws the original character 1 time in 96.
    chars = VOCAB_SIZE - FIRST_CHAR_ID
    assert _within_sigmas(int(masked.sum()), n, 0.8)
    assert _within_sigmas(int(replaced.sum()), n, 0.1 * (chars - 1) / chars)
    assert _within_sigmas(int(kept.sum()), n, 0.1 + 0.1 / chars)
    assert (x[replaced] >= FIRST_CHAR_ID).all() and (x[replaced] < VOCAB_SIZE).all()


def test_seed_fixes_order_and_masks_and_sizes_keep_a_prefix(split):
    small = load_shakespeare(train_size=100, test_size=50)
    assert (len(small.train), len(small.test)) == (100, 50)
    for full, part in zip(
        (*split.train.tensors, *split.test.tensors),
        (*small.train.tensors, *small.test.tensors),
        strict=True,
    ):
        assert torch.equal(full[: len(part)], part)
    other = load_shakespeare(train_size=100, test_size=50, seed=1)
    assert not torch.equal(small.train.tensors[0], other.train.tensors[0])
    assert not torch.equal(small.test.tensors[1], other.test.tensors[1])


def test_load_dataset_routes_to_shakespeare():
    data = load_dataset("shakespeare", train_size=10, test_size=5)
    assert (data.name, len(data.train), len(data.test)) == ("shakespeare", 10, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_size": 0}, "train_size.*0"),
        ({"test_size": -3}, "test_size.*-3"),
        ({"train_size": 10**7}, "train_size.*10000000"),
        ({"test_size": 10**6}, "test_size.*1000000"),
        ({"seq_len": 0}, "seq_len.*0"),
    ],
)
def test_load_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_shakespeare(**kwargs)


# ---------------------------------------------------------------------------- mask_tokens


@given(
    seed=st.integers(0, 2**32),
    shape=st.tuples(st.integers(1, 8), st.integers(1, 32)),
    mask_prob=st.floats(0.0, 1.0),
)
def test_mask_tokens_properties(seed, shape, mask_prob):
    tokens = torch.randint(0, VOCAB_SIZE, shape, generator=torch.Generator().manual_seed(seed))
    tokens[tokens == MASK_ID] = PAD_ID  # real data holds no MASK

    def draw():
        generator = torch.Generator().manual_seed(seed)
        return mask_tokens(tokens, generator=generator, mask_prob=mask_prob)

    inputs, targets = draw()
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.shape == targets.shape == shape
    selected = targets != IGNORE_INDEX
    assert torch.equal(targets[selected], tokens[selected])
    assert torch.equal(inputs[~selected], tokens[~selected])  # unselected: untouched
    assert not selected[tokens == PAD_ID].any()
    new = inputs[selected & (inputs != tokens)]  # MASK or a random ordinary character
    assert ((new == MASK_ID) | (new >= FIRST_CHAR_ID)).all()
    for a, b in zip(draw(), (inputs, targets), strict=True):  # same generator seed, same masks
        assert torch.equal(a, b)


def test_mask_prob_extremes_select_all_or_nothing():
    tokens = torch.tensor([[5, 6, 7, PAD_ID], [8, 9, PAD_ID, PAD_ID]])
    generator = torch.Generator().manual_seed(0)
    _, targets = mask_tokens(tokens, generator=generator, mask_prob=1.0)
    assert torch.equal(targets, torch.where(tokens != PAD_ID, tokens, IGNORE_INDEX))
    inputs, targets = mask_tokens(tokens, generator=generator, mask_prob=0.0)
    assert torch.equal(inputs, tokens) and (targets == IGNORE_INDEX).all()


def test_different_seeds_give_different_masks():
    tokens = torch.full((16, 128), 10)
    a, b = (mask_tokens(tokens, generator=torch.Generator().manual_seed(s))[1] for s in (0, 1))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"mask_prob": 1.5}, "1.5"), ({"vocab_size": 3}, "vocab_size.*3")]
)
def test_mask_tokens_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mask_tokens(torch.ones(2, 2, dtype=torch.long), generator=torch.Generator(), **kwargs)
