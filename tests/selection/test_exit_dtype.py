"""A linear exit head is at least float32, whatever precision the features first
come in: one first built under bf16 autocast (a user's own mixed-precision loop)
keeps serving full-precision scoring passes, and keeps the right count."""

from __future__ import annotations

import torch

from sievetrain.models import build_model
from sievetrain.selection import SIFT


def test_a_linear_exit_head_built_under_autocast_is_float32_and_serves_fp32_calls(mnist1d):
    torch.manual_seed(0)
    model = build_model("mnist1d-cnn", num_classes=10, input_shape=mnist1d.input_shape)
    x, y = (t[:64] for t in mnist1d.train.tensors)
    selector = SIFT(0.5, head="linear", num_classes=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = selector.select(model, x, y)
    head = selector.exit.linear
    assert all(p.dtype == torch.float32 for p in head.parameters())
    in_full_precision = selector.select(model, x, y)  # raised a dtype mismatch before
    assert len(under_autocast) == len(in_full_precision) == 32
