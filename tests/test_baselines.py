"""The baselines (CBDM, OCLT, dispersive, supcon, DiffROP) against hand computations on tiny batches.

The hand computations use explicit Python loops, independent of the vectorised code.
"""

from __future__ import annotations

import math

import pytest
import torch

from ccua.build import build_methods, load_checked_config
from ccua.config import ConfigError, MethodConfig
from ccua.diffusion.base import NoisedBatch
from ccua.diffusion.ddpm import DDPM
from ccua.methods import (
    CBDM, CCUA, METHODS, OCLT, DiffROP, Dispersive, PassOutputs, StepContext, SupCon,
    check_combination, diffrop_loss, ucl_loss,
)
from ccua.methods.base import batch_problem
from ccua.methods.cbdm import CBDMConfig
from ccua.methods.diffrop import DiffROPConfig
from ccua.methods.dispersive import DispersiveConfig
from ccua.methods.oclt import donor_log_probs
from ccua.methods.supcon import SupConConfig

NULL = 3


class FlowStub:
    """Stands in for the flow objective: all OCLT looks at is the name."""

    name = "flow"


def make_context(x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, counts: list[float],
                 dropped: torch.Tensor | None = None, objective=None) -> StepContext:
    objective = objective if objective is not None else DDPM()
    noise = torch.randn_like(x0)
    if isinstance(objective, DDPM):
        x_t = objective.q_sample(x0, t, noise)
        s = objective.noise_level(t)
    else:
        x_t, s = x0 + noise, torch.full((x0.shape[0],), 0.5)
    batch = NoisedBatch(x0=x0, noise=noise, t=t, s=s, x_t=x_t, target=noise.clone())
    dropped = dropped if dropped is not None else torch.zeros(labels.shape[0], dtype=torch.bool)
    cond = torch.where(dropped, torch.full_like(labels, NULL), labels)
    return StepContext(batch=batch, labels=labels, cond_labels=cond, dropped=dropped, null_label=NULL,
                       class_counts=torch.tensor(counts), objective=objective)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the elements of one sample, by a loop."""
    a, b = a.flatten().tolist(), b.flatten().tolist()
    return sum((u - v) ** 2 for u, v in zip(a, b)) / len(a)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().tolist(), b.flatten().tolist()
    dot = sum(u * v for u, v in zip(a, b))
    return dot / math.sqrt(sum(u * u for u in a) * sum(v * v for v in b))


# ---------------------------------------------------------------------------------------- registry

def test_registry_and_build():
    assert set(METHODS) >= {"ccua", "cbdm", "oclt", "dispersive", "supcon"}
    config = MethodConfig(names=["ccua", "cbdm", "oclt", "dispersive", "supcon"])
    kinds = [type(m) for m in build_methods(config)]
    assert kinds == [CCUA, CBDM, OCLT, Dispersive, SupCon]
    assert [m.name for m in build_methods(config)] == config.names


def test_check_combination():
    with pytest.raises(ValueError, match="oclt.*ddpm"):
        check_combination(["oclt"], "flow")
    with pytest.raises(ValueError, match="oclt"):
        check_combination(["ccua", "oclt"], "flow")
    check_combination(["oclt", "cbdm", "ccua"], "ddpm")
    check_combination(["ccua", "supcon"], "flow")
    check_combination(["ccua", "cbdm", "dispersive", "supcon"], "flow")
    check_combination(["plain"], "flow")
    with pytest.raises(ValueError, match="plain"):
        check_combination(["plain", "ccua"], "ddpm")
    with pytest.raises(ValueError, match="twice"):
        check_combination(["cbdm", "cbdm"], "ddpm")
    with pytest.raises(ValueError, match="unknown"):
        check_combination(["nope"], "ddpm")


@pytest.mark.parametrize("override, message", [
    ("method.oclt.mode=h2t", "method.oclt.mode='h2t' is not one of: t2h"),
    ("method.cbdm.prior=balanced", "method.cbdm.prior='balanced' is not one of: empirical, uniform"),
    ("method.supcon.weighting=linear", "method.supcon.weighting='linear' is not one of: noise_level, flow_time, none"),
    ("method.dispersive.temperature=0", r"method.dispersive.temperature=0.0 must be > 0"),
    ("method.ccua.ucl_fraction=0.1", "method.ccua needs 0 < uncond_fraction <= ucl_fraction <= 1"),
])
def test_bad_settings_are_refused_with_the_config(override, message):
    """Each method's settings carry their valid values; the config check refuses the others."""
    with pytest.raises(ConfigError, match=message):
        load_checked_config(None, [override])


# -------------------------------------------------------------------------------------------- CBDM

def test_cbdm_loss_by_hand():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2])
    dropped = torch.tensor([False, True, False])
    context = make_context(torch.randn(3, 2, 2, 2), labels, torch.tensor([100, 500, 900]), [5, 3, 1], dropped)
    pred_y, pred_o = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    tau = 0.7
    terms = CBDM(CBDMConfig(tau=tau)).loss_terms(
        context, PassOutputs(predictions={"cond": pred_y, "other": pred_o}, representations={}))
    assert set(terms) == {"cbdm"}
    expected = 0.0
    for i in range(3):
        if dropped[i]:
            continue  # dropped labels contribute nothing
        s_i = float(context.batch.s[i])
        expected += tau * s_i * (mse(pred_y[i], pred_o[i]) + 0.25 * mse(pred_y[i], pred_o[i]))
    expected /= 3  # mean over the whole batch
    assert terms["cbdm"].item() == pytest.approx(expected, rel=1e-5)


def test_cbdm_stop_gradients():
    """d/d pred_y sees only the first term, d/d pred_y' only the quarter-weighted second."""
    torch.manual_seed(1)
    size, shape = 4, (1, 2, 3)
    n = 6
    context = make_context(torch.randn(size, *shape), torch.tensor([0, 1, 2, 0]),
                           torch.tensor([10, 300, 600, 999]), [5, 3, 1])
    pred_y = torch.randn(size, *shape, requires_grad=True)
    pred_o = torch.randn(size, *shape, requires_grad=True)
    tau = 1.0
    loss = CBDM(CBDMConfig(tau=tau)).loss_terms(
        context, PassOutputs(predictions={"cond": pred_y, "other": pred_o}, representations={}))["cbdm"]
    loss.backward()
    for i in range(size):
        w = tau * float(context.batch.s[i]) / size
        for e in range(n):
            diff = pred_y[i].flatten()[e].item() - pred_o[i].flatten()[e].item()
            assert pred_y.grad[i].flatten()[e].item() == pytest.approx(w * 2 * diff / n, rel=1e-4, abs=1e-7)
            assert pred_o.grad[i].flatten()[e].item() == pytest.approx(w * 0.25 * 2 * -diff / n, rel=1e-4, abs=1e-7)


def test_cbdm_stop_gradients_through_separate_parameters():
    """A linear 'network' whose two passes use separate weights: each gets only its own term."""
    torch.manual_seed(2)
    x = torch.randn(3, 4)
    w_cond = torch.randn(4, 4, requires_grad=True)
    w_other = torch.randn(4, 4, requires_grad=True)
    context = make_context(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.tensor([999, 999, 999]), [1, 1, 1])
    outputs = PassOutputs(predictions={"cond": x @ w_cond, "other": x @ w_other}, representations={})
    CBDM().loss_terms(context, outputs)["cbdm"].backward()
    grad_cond, grad_other = w_cond.grad.clone(), w_other.grad.clone()
    # The same gradients from each term on its own.
    w_cond.grad = w_other.grad = None
    s = context.batch.s.float()[:, None]
    ((s * ((x @ w_cond) - (x @ w_other).detach()).pow(2)).mean()).backward()
    assert torch.allclose(grad_cond, w_cond.grad, atol=1e-6) and w_other.grad is None
    w_cond.grad = None
    ((s * 0.25 * ((x @ w_cond).detach() - (x @ w_other)).pow(2)).mean()).backward()
    assert torch.allclose(grad_other, w_other.grad, atol=1e-6) and w_cond.grad is None


@pytest.mark.parametrize("prior, expected", [("empirical", [0.6, 0.3, 0.1]), ("uniform", [1 / 3, 1 / 3, 1 / 3])])
def test_cbdm_prior_frequencies(prior, expected):
    method = CBDM(CBDMConfig(prior=prior))
    context = make_context(torch.zeros(5000, 1), torch.zeros(5000, dtype=torch.long),
                           torch.zeros(5000, dtype=torch.long), [600, 300, 100])
    torch.manual_seed(3)
    draws = []
    for _ in range(4):
        method.prepare(context)
        draws.append(context.pass_labels["other"])
    other = torch.cat(draws)
    assert other.dtype == context.labels.dtype and other.min() >= 0 and other.max() <= 2  # never null
    freq = torch.bincount(other, minlength=3).float() / other.numel()
    assert torch.allclose(freq, torch.tensor(expected), atol=0.01)
    # Reproducible from torch's global generator.
    torch.manual_seed(3)
    method.prepare(context)
    assert torch.equal(context.pass_labels["other"], draws[0])


# -------------------------------------------------------------------------------------------- OCLT

def test_oclt_reference_probabilities_by_hand():
    torch.manual_seed(4)
    ddpm = DDPM()
    x0 = torch.randn(3, 2, 2)
    t = torch.tensor([50, 200, 400])
    x_t = ddpm.q_sample(x0, t, torch.randn_like(x0))
    log_probs = donor_log_probs(x_t, x0, ddpm.alpha_bar(t))
    for i in range(3):
        ab = ddpm.alpha_bar(t[i : i + 1]).item()  # the objective's (float32) alphabar
        sigma2 = 1 / ab - 1
        point = [v / math.sqrt(ab) for v in x_t[i].flatten().tolist()]
        logits = []
        for j in range(3):
            dist = sum((p - q) ** 2 for p, q in zip(point, x0[j].flatten().tolist()))
            logits.append(-dist / (2 * sigma2))
        top = max(logits)
        norm = top + math.log(sum(math.exp(v - top) for v in logits))
        for j in range(3):
            assert log_probs[i, j].item() == pytest.approx(logits[j] - norm, rel=1e-7, abs=1e-7)


def test_oclt_tail_takes_head_never_reverse():
    """Pure-noise timesteps make every reference nearly equally likely, so swaps are frequent."""
    torch.manual_seed(5)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # class 0 = head (100 images), 1 = tail (3)
    method = OCLT()
    tail_took_head = head_took_tail = head_took_head = 0
    for _ in range(100):
        context = make_context(torch.randn(8, 2, 3, 3), labels, torch.full((8,), 999), [100, 3])
        original = context.batch.target.clone()
        method.prepare(context)
        ref = method.last_donor
        for i in range(8):
            j = int(ref[i])
            head_took_tail += int(labels[i] == 0 and labels[j] == 1)
            tail_took_head += int(labels[i] == 1 and labels[j] == 0)
            head_took_head += int(labels[i] == 0 and labels[j] == 0 and j != i)
            # The target is the closed-form epsilon for x0_j, or untouched when j = i.
            ab = DDPM().alphas_cumprod[999].item()
            for e in range(18):
                x_t = context.batch.x_t[i].flatten()[e].item()
                x0_j = context.batch.x0[j].flatten()[e].item()
                want = (x_t - math.sqrt(ab) * x0_j) / math.sqrt(1 - ab) if j != i else original[i].flatten()[e].item()
                assert context.batch.target[i].flatten()[e].item() == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert head_took_tail == 0
    assert tail_took_head > 100 and head_took_head > 100
    assert 0 < method.last_swap_fraction <= 1


def test_oclt_low_noise_keeps_own_target():
    torch.manual_seed(6)
    context = make_context(torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.zeros(6, dtype=torch.long),
                           [9, 5, 1])
    original = context.batch.target.clone()
    method = OCLT()
    method.prepare(context)
    assert torch.equal(method.last_donor, torch.arange(6))
    assert torch.equal(context.batch.target, original) and method.last_swap_fraction == 0.0


def test_oclt_target_closed_form():
    ddpm = DDPM()
    torch.manual_seed(7)
    x0, noise = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    t = torch.tensor([300, 700])
    x_t = ddpm.q_sample(x0, t, noise)
    # Swapping in a sample's own x0 gives back its noise.
    assert torch.allclose(ddpm.epsilon_target(x_t, x0, t), noise, atol=1e-4)
    swapped = ddpm.epsilon_target(x_t, x0.flip(0), t)
    for i in range(2):
        ab = ddpm.alphas_cumprod[t[i]].item()
        for e in range(4):
            want = (x_t[i].flatten()[e].item() - math.sqrt(ab) * x0[1 - i].flatten()[e].item()) / math.sqrt(1 - ab)
            assert swapped[i].flatten()[e].item() == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_oclt_errors():
    with pytest.raises(ValueError, match="oclt needs the ddpm objective"):
        OCLT().prepare(make_context(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.zeros(4), [2, 1],
                                    objective=FlowStub()))


# -------------------------------------------------------------------------------------- dispersive

def dispersive_by_hand(z: torch.Tensor, tau: float) -> float:
    size, dim = z.shape[0], z[0].numel()
    total = 0.0
    for i in range(size):
        for j in range(size):
            dist = sum((a - b) ** 2 for a, b in zip(z[i].flatten().tolist(), z[j].flatten().tolist()))
            total += math.exp(-dist / (dim * tau))
    return math.log(total / size**2)


def test_dispersive_closed_form_b2_and_hand_b3():
    torch.manual_seed(8)
    h = torch.randn(2, 4, 2, 2)  # a U-Net-like bottleneck, D = 16
    config = DispersiveConfig(weight=0.5, temperature=0.5)
    context = make_context(torch.randn(2, 1), torch.tensor([0, 1]), torch.tensor([1, 2]), [1, 1])
    term = Dispersive(config).loss_terms(context, PassOutputs(predictions={}, representations={"cond": h}))
    dist = (h[0] - h[1]).pow(2).sum().item()
    closed = 0.5 * math.log((2 + 2 * math.exp(-dist / (16 * 0.5))) / 4)
    assert term["dispersive"].item() == pytest.approx(closed, rel=1e-5)
    tokens = torch.randn(3, 5, 2, requires_grad=True)  # DiT-like tokens [B, N, D]
    context = make_context(torch.randn(3, 1), torch.tensor([0, 1, 1]), torch.tensor([1, 2, 3]), [1, 1])
    term = Dispersive().loss_terms(context, PassOutputs(predictions={}, representations={"cond": tokens}))
    assert term["dispersive"].item() == pytest.approx(0.25 * dispersive_by_hand(tokens.detach(), 1.0), rel=1e-5)
    term["dispersive"].backward()
    assert torch.isfinite(tokens.grad).all()  # no NaN from the zero-distance diagonal


def test_each_methods_smallest_batch_is_checked_in_one_place():
    """A batch of one is refused for every method whose loss needs pairs (UCL, dispersive, OCLT's
    transfer, ...) by one check, before training and at every step; CBDM takes any batch."""
    methods = [method() for method in METHODS.values()]
    assert batch_problem(methods, 2) is None
    problem = batch_problem(methods, 1)
    for method in methods:
        assert (f"method {method.name!r} needs a per-process batch of at least 2" in problem) == (method.min_batch == 2)
    assert {m.name for m in methods if m.min_batch == 2} == {"ccua", "oclt", "dispersive", "supcon", "diffrop"}


# ------------------------------------------------------------------------------------------ supcon

def test_supcon_all_distinct_labels_equals_ucl():
    torch.manual_seed(9)
    h = torch.randn(5, 3, 2, 2)
    labels = torch.tensor([4, 0, 2, 1, 3])
    context = make_context(torch.randn(5, 1), labels, torch.tensor([10, 200, 400, 800, 999]), [1] * 5)
    term = SupCon(SupConConfig(weight=1.0, temperature=0.2)).loss_terms(
        context, PassOutputs(predictions={}, representations={"uncond": h}))
    expected = ucl_loss(h, 0.2, context.batch.s)
    assert term["supcon"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_supcon_by_hand():
    torch.manual_seed(10)
    h = torch.randn(5, 6)
    labels = torch.tensor([0, 1, 0, 2, 0])  # one class of three, two singletons
    tau, weight = 0.3, 0.8
    context = make_context(torch.randn(5, 1), labels, torch.tensor([100, 300, 500, 700, 900]), [3, 1, 1])
    term = SupCon(SupConConfig(weight=weight, temperature=tau)).loss_terms(
        context, PassOutputs(predictions={}, representations={"uncond": h}))
    total = 0.0
    for i in range(5):
        denom = sum(math.exp(cosine(h[i], h[a]) / tau) for a in range(5))
        positives = [p for p in range(5) if labels[p] == labels[i]]
        l_i = -sum(math.log(math.exp(cosine(h[i], h[p]) / tau) / denom) for p in positives) / len(positives)
        total += float(context.batch.s[i]) * l_i
    assert term["supcon"].item() == pytest.approx(weight * total / 5, rel=1e-5)


def test_supcon_batch_of_one():
    context = make_context(torch.randn(1, 1), torch.tensor([0]), torch.tensor([1]), [1])
    with pytest.raises(ValueError, match="supcon needs at least 2"):
        SupCon().loss_terms(context, PassOutputs(predictions={}, representations={"uncond": torch.randn(1, 8)}))


def test_supcon_with_ccua_shares_the_uncond_pass():
    torch.manual_seed(11)
    methods = build_methods(MethodConfig(names=["ccua", "supcon"]))
    assert {p for m in methods for p in m.passes} == {"uncond"}
    context = make_context(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), torch.tensor([10, 20, 30, 40]), [2, 2])
    outputs = PassOutputs(predictions={"cond": torch.randn(4, 2), "uncond": torch.randn(4, 2)},
                          representations={"uncond": torch.randn(4, 3)})
    terms = {k: v for m in methods for k, v in m.loss_terms(context, outputs).items()}
    assert set(terms) == {"ucl", "al", "supcon"} and all(torch.isfinite(v) for v in terms.values())


# ---------------------------------------------------------------------------------------- DiffROP

def test_diffrop_by_hand():
    """lambda / (1 + d), d = mean_i t_i [y_i != y_pi(i)] mean_e (v_i - v_pi(i))^2, t = 1 - s."""
    predictions = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 0])
    data_time = torch.tensor([0.5, 1.0, 0.25, 0.75])
    permutation = torch.tensor([1, 0, 3, 2])  # pairs (0, 1) and (2, 3): only the first pair is of two classes
    total = 0.0
    for i in range(4):
        j = int(permutation[i])
        if labels[i] != labels[j]:
            total += float(data_time[i]) * mse(predictions[i], predictions[j])
    expected = 0.1 / (1 + total / 4)
    assert diffrop_loss(predictions, labels, data_time, permutation, 0.1).item() == pytest.approx(expected, rel=1e-6)
    same = diffrop_loss(predictions, torch.zeros(4, dtype=torch.long), data_time, permutation, 0.1)
    assert same.item() == pytest.approx(0.1)  # pairs of one class add nothing


def test_diffrop_pushes_the_predictions_of_two_classes_apart():
    torch.manual_seed(12)
    predictions = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    permutation = torch.tensor([1, 2, 0, 4, 5, 3])
    ones = torch.ones(6)
    before = diffrop_loss(predictions, labels, ones, permutation, 0.1)
    before.backward()
    with torch.no_grad():
        moved = predictions - 1.0 * predictions.grad
        spread_before = torch.cdist(predictions, predictions).mean()
        assert diffrop_loss(moved, labels, ones, permutation, 0.1) < before
        assert torch.cdist(moved, moved).mean() > spread_before


def test_diffrop_as_a_method_reads_the_true_labels_and_the_data_time():
    torch.manual_seed(13)
    method = DiffROP(DiffROPConfig(weight=0.2))
    labels = torch.tensor([0, 1, 0, 1])
    dropped = torch.tensor([True, False, False, False])  # a dropped label still counts with its class
    context = make_context(torch.randn(4, 2), labels, torch.tensor([100, 500, 900, 300]), [2, 2], dropped=dropped)
    method.prepare(context)
    predictions = torch.randn(4, 2)
    terms = method.loss_terms(context, PassOutputs(predictions={"cond": predictions}, representations={}))
    expected = diffrop_loss(predictions, labels, 1 - context.batch.s, context.state["diffrop_permutation"], 0.2)
    assert set(terms) == {"diffrop"} and terms["diffrop"].item() == pytest.approx(expected.item())
    check_combination(["ccua", "diffrop"], "flow")  # combinable, on either objective
    check_combination(["ccua", "diffrop"], "ddpm")


def test_diffrop_with_ccua_trains_and_logs_its_own_term(tmp_path):
    import json

    from ccua.config import config_from_dict
    from ccua.training import train
    from tests.conftest import tiny_config_dict

    run = train(config_from_dict(tiny_config_dict(tmp_path, method={"names": ["ccua", "diffrop"]})))
    rows = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert all({"dm", "ucl", "al", "diffrop"} <= set(row) for row in rows)
    assert all(0 < row["diffrop"] <= 0.1 for row in rows)  # lambda / (1 + d) with d >= 0


def test_the_release_preset_differs_from_the_published_one_where_the_release_does():
    from ccua.build import load_checked_config

    published = load_checked_config("sit_s2_imagenet_lt256")
    release = load_checked_config("sit_s2_imagenet_lt256_release")
    assert release.method.names == ["ccua", "diffrop"] and release.method.diffrop.weight == 0.1
    assert release.method.ccua.weighting == "flow_time" and published.method.ccua.weighting == "noise_level"
    assert (release.sample.guidance, release.sample.guidance_channels) == (6.5, 3)  # cfg 7.5 on 3 channels
    for section in ("data", "model", "diffusion", "train"):
        assert getattr(release, section) == getattr(published, section), section
    assert (release.method.ccua.alpha, release.method.ccua.gamma) == (0.05, 0.05)
