"""The examples run: CCUA in a diffusers UNet2DModel's own loop, sampled and scored by ccua."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ccua_trains_a_diffusers_unet_and_ccua_samples_and_scores_it():
    example = _example("diffusers_unet_ccua")
    losses, scores = example.main(steps=3, batch_size=8, per_class=2, sampler_steps=3, features="random",
                                  max_reference=60)
    assert set(losses) == {"dm", "ucl", "al"} and all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert scores.overall.n_generated == 20 and scores.fid > 0 and scores.groups["tail"].n_generated == 6


def test_the_hook_takes_the_unconditional_passs_middle_block_and_gradients_reach_it():
    example = _example("diffusers_unet_ccua")
    torch.manual_seed(0)
    model = example.build_unet(num_classes=3, resolution=8)
    x0, labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0])
    losses = example.ccua_step(model, example.DDPM(), x0, labels)
    losses["ucl"].backward()
    # UCL acts on the unconditional pass's h: the middle block and everything below it get gradients
    assert model.unet.mid_block.attentions[0].to_q.weight.grad.abs().sum() > 0
    assert model.unet.conv_in.weight.grad.abs().sum() > 0
    assert model.unet.conv_out.weight.grad is None  # nothing after the middle block
