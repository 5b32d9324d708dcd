"""UCL and AL against hand computations, with gradients."""

import math

import pytest
import torch

from ccua.methods.ccua import alignment_loss, noise_weight, ucl_loss


def hand_ucl(h, tau, weight=None):
    """The SPEC's formula written with explicit loops."""
    flat = [row.flatten() for row in h]
    total = 0.0
    for i, hi in enumerate(flat):
        denominator = math.exp(1 / tau)
        for j, hj in enumerate(flat):
            if j != i:
                cosine = float(hi @ hj / (hi.norm() * hj.norm()))
                denominator += math.exp(cosine / tau)
        loss_i = -math.log(math.exp(1 / tau) / denominator)
        total += loss_i * (1.0 if weight is None else float(weight[i]))
    return total / len(flat)


def test_ucl_matches_the_formula():
    torch.manual_seed(1)
    h = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    weight = torch.rand(5)
    for tau in (0.1, 0.5, 1.0):
        assert ucl_loss(h, tau).item() == pytest.approx(hand_ucl(h, tau), rel=1e-5)
        assert ucl_loss(h, tau, weight).item() == pytest.approx(hand_ucl(h, tau, weight), rel=1e-5)


def test_ucl_two_orthogonal_vectors_closed_form():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # c_12 = 0: L_i = log(1 + exp(-1/tau)) for both samples.
    assert ucl_loss(h, 0.1).item() == pytest.approx(math.log(1 + math.exp(-10)), rel=1e-6)


def test_ucl_gradient_matches_finite_differences():
    torch.manual_seed(2)
    h = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ucl_loss(x, 0.3, weight).double(), (h,))


def test_ucl_gradient_analytic_two_samples():
    # h1 = (1, 0), h2 = (cos a, sin a): L = log(1 + exp((cos a - 1)/tau)) for each sample.
    a, tau = 0.7, 0.5
    angle = torch.tensor(a, requires_grad=True)
    h = torch.stack([torch.tensor([1.0, 0.0]), torch.stack([torch.cos(angle), torch.sin(angle)])])
    ucl_loss(h, tau).backward()
    e = math.exp((math.cos(a) - 1) / tau)
    expected = e / (1 + e) * (-math.sin(a) / tau)  # d/da of the mean of two equal terms
    assert angle.grad.item() == pytest.approx(expected, rel=1e-5)


def test_ucl_is_repulsive():
    h = torch.tensor([[1.0, 0.1], [1.0, -0.1]], requires_grad=True)
    ucl_loss(h, 0.1).backward()
    # The gradient step (-grad) pushes the two vectors' second components apart.
    assert -h.grad[0, 1] > 0 and -h.grad[1, 1] < 0


def test_ucl_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        ucl_loss(torch.randn(1, 4))


def test_alignment_loss_hand_values():
    cond = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    uncond = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    weight = torch.tensor([0.5, 0.0, 1.0])
    # per sample mean squared differences: 2.5, 1.0, 2.0
    assert alignment_loss(cond, uncond).item() == pytest.approx((2.5 + 1.0 + 2.0) / 3)
    assert alignment_loss(cond, uncond, weight).item() == pytest.approx((0.5 * 2.5 + 0 + 2.0) / 3)


def test_alignment_loss_gradient_flows_into_both_predictions():
    cond = torch.tensor([[1.0, 2.0]], requires_grad=True)
    uncond = torch.tensor([[0.0, 1.0]], requires_grad=True)
    alignment_loss(cond, uncond, torch.tensor([0.5])).backward()
    # d/dc of 0.5 * mean((c - u)^2) = 0.5 * 2 (c - u) / 2
    assert torch.allclose(cond.grad, torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(uncond.grad, -cond.grad)


def test_noise_weights():
    s = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(noise_weight(s, "noise_level"), s)
    assert torch.equal(noise_weight(s, "flow_time"), 1 - s)
    assert torch.equal(noise_weight(s, "none"), torch.ones(3))


def test_weighted_mean_is_the_tail_of_every_per_sample_loss():
    from ccua.methods.base import weighted_mean

    values = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    weight = torch.tensor([0.5, 0.0, 1.0])
    assert weighted_mean(values, weight).item() == pytest.approx((0.5 + 0.0 + 4.0) / 3)
    assert weighted_mean(values, weight).dtype == torch.float64  # the weight takes the values' dtype
    assert weighted_mean(values).item() == pytest.approx(7 / 3)
    pred, other = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    per_sample = (pred - other).pow(2).flatten(1).mean(1)
    assert torch.equal(alignment_loss(pred, other, weight), weighted_mean(per_sample, weight))
