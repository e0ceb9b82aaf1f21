"""scoring_mode (scoring.py): a scoring pass leaves nothing a training step reads."""

import torch
from torch import nn

from sievetrain.scoring import scoring_mode


def test_a_scoring_pass_updates_no_running_statistics_and_consumes_no_randomness():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5)).train()
    x = torch.randn(16, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with scoring_mode(model):
        scored = model(x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model[1].track_running_stats
    # It saw the batch as a training step does: batch statistics and the same dropout draw.
    torch.set_rng_state(rng)
    assert torch.equal(scored, model(x))
