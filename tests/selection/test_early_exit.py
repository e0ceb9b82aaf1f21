"""Early exits: removable, side-effect free, stopping at the stage, with a reused or a
learning linear head, and errors that name the stage."""

import pytest
import torch

from sievetrain.losses import sample_losses
from sievetrain.selection import SIFT, EarlyExit, scoring_mode


def test_removing_an_exit_restores_the_model_bitwise(mnist1d, make_model, state):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:64], mnist1d.train.tensors[1][:64]
    model.train()
    before_state = state(model)
    with torch.no_grad():
        before = model(x)
    exit_ = EarlyExit(model, "stage1", head="linear", num_classes=10)
    exit_.logits(model, x, y)  # a scoring pass with a training step of the head
    with torch.no_grad():
        during = model(x)  # an ordinary forward with the hook present but not armed
    exit_.remove()
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert not any(m._forward_hooks for m in model.modules())
    assert list(state(model)) == list(before_state)  # no submodule was added


def test_scoring_pass_stops_at_the_exit_and_has_no_side_effects(mnist1d, make_model, state):
    model = make_model(mnist1d)
    model.train()
    ran = []
    model.stage2.register_forward_hook(lambda *_: ran.append("stage2"))
    x, y = mnist1d.train.tensors[0][:64], mnist1d.train.tensors[1][:64]
    before = state(model)
    rng = torch.random.get_rng_state()
    SIFT(0.5, stage="stem", num_classes=10).select(model, x, y)
    assert ran == []  # the stages after the exit never ran
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. batch-norm stats
    assert torch.equal(rng, torch.random.get_rng_state())


def test_auto_head_reuses_the_model_head_where_it_fits(mnist1d, make_model):
    model = make_model(mnist1d)  # stage2 ends where the head starts; the stem is narrower
    x, y = mnist1d.train.tensors[0][:32], mnist1d.train.tensors[1][:32]
    reuse = EarlyExit(model, "stage2", num_classes=10)
    linear = EarlyExit(model, "stem", num_classes=10)
    with scoring_mode(model):
        assert reuse.logits(model, x, y).shape == (32, 10)
        assert linear.logits(model, x, y).shape == (32, 10)
    assert (reuse.kind, linear.kind) == ("reuse", "linear")
    assert sum(p.numel() for p in linear.linear.parameters()) == 32 * 4 * 10 + 10


def test_the_linear_exit_head_learns(mnist1d, make_model):
    model = make_model(mnist1d)
    model.train()
    selector = SIFT(0.5, stage="stage1", head="linear", num_classes=10, head_lr=1e-2)
    x, y = mnist1d.train.tensors
    first = sample_losses(
        selector.attach(model).logits(model, x[:500], y[:500], train_head=False), y[:500]
    )
    for start in range(0, 2000, 100):
        selector.select(model, x[start : start + 100], y[start : start + 100])
    later = selector.exit.logits(model, x[:500], y[:500], train_head=False)
    assert sample_losses(later, y[:500]).mean() < 0.8 * first.mean()


def test_a_state_dict_is_a_snapshot(mnist1d, make_model):
    """Later steps leave a saved state alone: loading it (even in the same process, as
    rank 0 does with a broadcast state) resumes from the moment it was taken."""
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:64], mnist1d.train.tensors[1][:64]
    exit_ = EarlyExit(model, "stem", head="linear", num_classes=10)
    exit_.logits(model, x, y)
    saved = exit_.state_dict()
    weight = saved["linear"]["2.weight"].clone()
    exp_avg = saved["optimizer"]["state"][0]["exp_avg"].clone()
    exit_.logits(model, x, y)
    assert torch.equal(saved["linear"]["2.weight"], weight)
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], exp_avg)


# -- bad input --------------------------------------------------------------------


def test_unknown_stage_names_the_stage(mnist1d, make_model):
    model = make_model(mnist1d)
    x, y = mnist1d.train.tensors[0][:8], mnist1d.train.tensors[1][:8]
    with pytest.raises(ValueError, match="'stage9'.*stem, stage1, stage2, head"):
        SIFT(0.5, stage="stage9", num_classes=10).select(model, x, y)
    with pytest.raises(ValueError, match="use head='linear'"):
        SIFT(0.5, stage="stem", head="reuse").select(model, x, y)
