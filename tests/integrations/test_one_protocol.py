"""One step protocol: sievetrain's Trainer, a hand-written loop, Lightning, the Hugging
Face Trainer and accelerate all run a method through :class:`sievetrain.Sieve`, so one
seed trains the same samples in the same steps in each (front_ends.py)."""

from __future__ import annotations

import front_ends  # this folder is on pytest's path
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", front_ends.METHODS)
def test_every_front_end_trains_the_same_samples_in_the_same_steps(name):
    runs = {end: run(name) for end, run in front_ends.FRONT_ENDS.items()}
    reference, weights = runs["trainer"]
    epochs = [epoch for epoch, _ in reference]
    assert sorted(set(epochs)) == list(range(front_ends.EPOCHS))
    sizes = [len(idx) for _, idx in reference]
    if name == "selective-backprop":
        # Epoch 0 is full data; then kept samples are gathered into full batches, each
        # epoch's remainder trained last as a shorter one.
        assert sizes[:6] == [front_ends.BATCH] * 6
        later = sizes[6:]
        assert len(later) < 12 and later.count(front_ends.BATCH) >= len(later) - 2
    elif name == "rho-loss":
        # A quarter of the 96 samples trains the reference (in begin_epoch) and is never
        # trained on; half of each candidate batch of 32 is kept, gathered into full
        # batches of 16, each epoch's remainder trained last.
        assert len({i for _, idx in reference for i in idx}) <= 72
        for epoch in range(front_ends.EPOCHS):
            mine = [len(idx) for e, idx in reference if e == epoch]
            assert mine[:-1] == [front_ends.BATCH] * (len(mine) - 1) and 30 <= sum(mine) <= 42
    else:  # GRAD-MATCH: half of the 6 batches of the partition, re-selected every epoch
        assert sizes == [front_ends.BATCH] * 9
        subsets = [sorted(i for e, idx in reference if e == epoch for i in idx) for epoch in (0, 1)]
        assert subsets[0] != subsets[1]
    for end, (trained, params) in runs.items():
        assert trained == reference, end
        for key, value in params.items():
            torch.testing.assert_close(value, weights[key], rtol=0, atol=1e-6, msg=end)
