"""The cheaper CCUA: the unconditional pass on a sub-batch drawn in proportion to the noise weight."""

from __future__ import annotations

import pytest
import torch

from ccua.config import config_from_dict
from ccua.methods.ccua import CCUAConfig
from ccua.diffusion import DDPM
from ccua.build import build_methods
from ccua.methods.ccua import (CCUA, alignment_loss, inclusion_probabilities, subset_ucl_loss, systematic_sample,
                               ucl_loss)
from ccua.models import UNet
from ccua.training.step import PassRunner, training_losses
from tests.conftest import tiny_config_dict


def test_inclusion_probabilities_are_proportional_capped_and_sum_to_the_size():
    weights = torch.tensor([0.0, 1.0, 1.0, 2.0, 20.0, 4.0])
    pi = inclusion_probabilities(weights, 3)
    assert pi[0] == 0 and pi[4] == 1  # weight 0 never, the dominant row always
    # the other 2 draws are shared in proportion to 1 : 1 : 2 : 4
    assert torch.allclose(pi[[1, 2, 3, 5]], torch.tensor([0.25, 0.25, 0.5, 1.0], dtype=torch.float64))
    assert pi.sum().item() == pytest.approx(3.0)
    assert torch.equal(inclusion_probabilities(torch.tensor([0.0, 2.0, 0.0]), 2), torch.tensor([0.0, 1.0, 0.0],
                                                                                              dtype=torch.float64))


def test_systematic_sampling_draws_distinct_rows_with_the_given_probabilities():
    torch.manual_seed(0)
    weights = torch.rand(16) + 0.05
    pi = inclusion_probabilities(weights, 5)
    counts = torch.zeros(16)
    draws = 20000
    for _ in range(draws):
        rows = systematic_sample(pi)
        assert len(rows) == 5 and len(set(rows.tolist())) == 5
        counts[rows] += 1
    frequency = counts / draws
    # binomial standard error at 20000 draws is below 0.0036
    assert torch.allclose(frequency, pi.float(), atol=0.015)


def test_sub_batch_alignment_loss_is_unbiased():
    torch.manual_seed(1)
    batch = 12
    pred_c, pred_u = torch.randn(batch, 3, 4, 4), torch.randn(batch, 3, 4, 4)
    s = torch.rand(batch)
    keep = torch.rand(batch) > 0.2
    full = alignment_loss(pred_c, pred_u, s * keep).item()
    pi = inclusion_probabilities(s, 4)
    estimates = []
    for _ in range(20000):
        rows = systematic_sample(pi)
        est = alignment_loss(pred_c[rows], pred_u[rows], (s * keep)[rows] / pi[rows].float()) * len(rows) / batch
        estimates.append(est.item())
    estimates = torch.tensor(estimates)
    standard_error = estimates.std().item() / len(estimates) ** 0.5
    assert abs(estimates.mean().item() - full) < 4 * standard_error + 1e-6
    assert estimates.std().item() > 0  # it really is an estimate


def test_subset_ucl_with_every_row_equals_the_full_loss():
    torch.manual_seed(2)
    h, s = torch.randn(10, 8, 2, 2), torch.rand(10)
    expected = ucl_loss(h, 0.1, s)
    got = subset_ucl_loss(h, 0.1, s, torch.ones(10, dtype=torch.float64), 10)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_subset_ucl_tracks_the_full_batch_value():
    """Sampled anchors and re-weighted negatives keep UCL near its full-batch value (its scale
    does not shrink with the number of negatives)."""
    torch.manual_seed(3)
    batch = 32
    h = torch.randn(batch, 16) + 2.0 * torch.randn(1, 16)  # a shared direction: cosines around 0.8
    s = torch.rand(batch)
    full = ucl_loss(h, 0.5, s).item()
    pi = inclusion_probabilities(s, 16)
    estimates = torch.tensor([subset_ucl_loss(h[r], 0.5, s[r], pi[r], batch).item()
                              for r in (systematic_sample(pi) for _ in range(3000))])
    assert abs(estimates.mean().item() - full) < 0.03 * full
    # UCL of a plain uniform half batch (15 negatives instead of 31) is clearly smaller
    naive = torch.tensor([ucl_loss(h[r], 0.5, s[r]).item() for r in (torch.randperm(batch)[:16] for _ in range(500))])
    assert naive.mean().item() < 0.85 * full


def _tiny_unet() -> UNet:
    torch.manual_seed(0)
    model = UNet(1, 4, 8, ch=8, ch_mult=(1, 2), attn_resolutions=(4,), num_res_blocks=1, dropout=0.0)
    with torch.no_grad():  # undo the zero initialisations, so that labels change the output and AL > 0
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _step_terms(fraction_overrides: dict, seed: int = 0):
    config = config_from_dict(tiny_config_dict("/tmp/unused", method={"names": ["ccua"],
                                                                      "ccua": fraction_overrides}))
    model = _tiny_unet()
    methods = build_methods(config.method)
    x0, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 4
    torch.manual_seed(seed)
    terms = training_losses(PassRunner(model), DDPM(), methods, x0, labels, model.null_label, torch.ones(4))
    return terms, methods[0]


def test_fraction_one_is_the_exact_method():
    full, method = _step_terms({})
    explicit, _ = _step_terms({"uncond_fraction": 1.0, "ucl_fraction": 1.0})
    assert not method.subsampled and method.passes == ("uncond",)
    for key in full:
        assert torch.equal(full[key], explicit[key])


def test_sub_batch_step_is_deterministic_under_the_step_seed():
    a, method = _step_terms({"uncond_fraction": 0.25, "ucl_fraction": 0.5}, seed=5)
    b, _ = _step_terms({"uncond_fraction": 0.25, "ucl_fraction": 0.5}, seed=5)
    c, _ = _step_terms({"uncond_fraction": 0.25, "ucl_fraction": 0.5}, seed=6)
    assert method.subsampled
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["al"], c["al"])


def test_sub_batch_pass_runs_the_encoder_on_more_rows_than_the_decoder():
    config = CCUAConfig(uncond_fraction=0.25, ucl_fraction=0.75)
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.inner = PassRunner(backbone)

        def forward(self, x, t, y, decode_index=None):
            pred, h = self.inner(x, t, y, decode_index)
            seen["rows"], seen["decoded"] = len(x), len(pred)
            return pred, h

    model = _tiny_unet()
    x0, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 4
    terms = training_losses(Recorder(model), DDPM(), [CCUA(config)], x0, labels, model.null_label, torch.ones(4))
    # one batched call: 16 conditional rows + 12 unconditional; decoded: 16 + 4
    assert seen == {"rows": 16 + 12, "decoded": 16 + 4}
    assert terms["ucl"].item() > 0 and terms["al"].item() > 0
    terms["total"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fractions_are_validated():
    with pytest.raises(ValueError, match="uncond_fraction <= ucl_fraction"):
        config_from_dict({"method": {"ccua": {"uncond_fraction": 0.5, "ucl_fraction": 0.25}}})
    with pytest.raises(ValueError, match="0 < uncond_fraction"):
        config_from_dict({"method": {"ccua": {"uncond_fraction": 0.0}}})


def test_sub_batch_passes_give_the_same_losses_batched_or_as_separate_calls():
    config = CCUAConfig(uncond_fraction=0.25, ucl_fraction=0.5)
    model = _tiny_unet()
    x0, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 4
    results = []
    for batched in (True, False):
        torch.manual_seed(3)
        results.append(training_losses(PassRunner(model), DDPM(), [CCUA(config)], x0, labels, model.null_label,
                                       torch.ones(4), batched_passes=batched))
    for key in results[0]:
        assert torch.allclose(results[0][key], results[1][key], rtol=1e-5, atol=1e-7), key
