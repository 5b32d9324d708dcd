"""Metrics from features, groups, the reference cache, evaluate() and ProxyFID (tiny inputs only)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.linalg
import torch

from ccua.data import ArraySource, LongTailDataset, class_groups, count_groups
from ccua.metrics import (GaussianStats, ProxyFID, RandomFeatureNet, Reference, class_accuracy, evaluate,
                          fid_from_features, frechet_distance, inception_score, kid, precision_recall,
                          reference_features, stratified_subset)
from ccua.metrics import scores
from ccua.report import format_table, write_metrics


def _gaussian(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * scale + shift


# --------------------------------------------------------------------------- FID

def test_fid_of_a_set_with_itself_is_zero():
    x = _gaussian(300, 16, 0)
    assert fid_from_features(x, x).value == pytest.approx(0.0, abs=1e-8)
    small = _gaussian(20, 64, 1)  # fewer samples than dimensions: the low-rank route
    result = fid_from_features(small, small)
    assert result.value == pytest.approx(0.0, abs=1e-8)
    assert result.rank_deficient


def test_fid_of_a_shifted_copy_is_the_squared_shift():
    x = _gaussian(400, 12, 0)
    shift = np.linspace(-1, 1, 12)
    expected = float(shift @ shift)
    assert fid_from_features(x, x + shift).value == pytest.approx(expected, rel=1e-7)  # the matrix square root is exact to ~1e-8 in float64
    few = _gaussian(10, 12, 1)  # low-rank route, same closed form
    assert fid_from_features(few, few + shift).value == pytest.approx(expected, rel=1e-7)  # the matrix square root is exact to ~1e-8 in float64


def test_fid_matches_scipy_sqrtm_on_small_matrices():
    rng = np.random.default_rng(3)
    for d in (3, 8, 20):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        root = scipy.linalg.sqrtm(s1 @ s2).real
        expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))
        result = frechet_distance(mu1, s1, mu2, s2)
        assert result.value == pytest.approx(expected, rel=1e-8)
        assert not result.rank_deficient


def test_fid_routes_agree_and_singular_covariances_stay_real():
    x, y = _gaussian(30, 50, 0), _gaussian(40, 50, 1, shift=0.3, scale=1.2)
    s1, s2 = GaussianStats.from_features(x), GaussianStats.from_features(y)
    eig = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, 30, 40)
    low = scores._frechet_low_rank(x, y)
    assert low.value == pytest.approx(eig.value, rel=1e-6)
    assert eig.rank_deficient and low.rank_deficient
    # exactly singular: duplicated columns; scipy's sqrtm route would go complex here
    z = np.repeat(_gaussian(500, 4, 2), 3, axis=1)
    w = z + 0.5
    s1, s2 = GaussianStats.from_features(z), GaussianStats.from_features(w)
    result = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, 500, 500)
    assert np.isfinite(result.value) and isinstance(result.value, float)
    assert result.value == pytest.approx(12 * 0.25, rel=1e-6)
    assert result.rank_deficient


def test_fid_flags_full_rank_sets_as_fine():
    result = fid_from_features(_gaussian(500, 8, 0), _gaussian(500, 8, 1))
    assert not result.rank_deficient and result.route == "eigh"


# --------------------------------------------------------------------------- KID

def _brute_force_mmd(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m = len(x)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_equals_the_unbiased_mmd_when_the_subset_is_everything():
    x, y = _gaussian(12, 5, 0), _gaussian(12, 5, 1, shift=0.4)
    mean, std, m = kid(x, y, num_subsets=3, subset_size=100)
    assert m == 12
    assert mean == pytest.approx(_brute_force_mmd(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_routes_agree(monkeypatch):
    x, y = _gaussian(80, 6, 0), _gaussian(70, 6, 1, shift=0.2)
    full = kid(x, y, num_subsets=7, subset_size=30, seed=5)
    monkeypatch.setattr(scores, "FULL_KERNEL_LIMIT", 0)
    per_subset = kid(x, y, num_subsets=7, subset_size=30, seed=5)
    assert full == pytest.approx(per_subset, rel=1e-10, abs=1e-14)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    same = [kid(_gaussian(60, 8, 2 * s), _gaussian(60, 8, 2 * s + 1), num_subsets=10, subset_size=60, seed=s)[0]
            for s in range(30)]
    spread = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * spread  # mean ~ 0: no positive bias as the biased estimator has
    assert min(same) < 0 < max(same)
    different = kid(_gaussian(60, 8, 0), _gaussian(60, 8, 1, shift=1.0), num_subsets=10, subset_size=60)[0]
    assert different > 10 * max(abs(v) for v in same)


# --------------------------------------------------------------------------- precision / recall

def _brute_force_pr(real, fake, k):
    def radii(points):
        out = []
        for i, p in enumerate(points):
            dist = sorted(np.linalg.norm(p - q) for j, q in enumerate(points) if j != i)
            out.append(dist[k - 1])
        return out

    def covered(queries, centres, radius):
        return np.mean([any(np.linalg.norm(q - c) <= r for c, r in zip(centres, radius)) for q in queries])

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_a_brute_force_loop(k):
    real = _gaussian(40, 3, 0)
    fake = _gaussian(35, 3, 1, shift=0.7, scale=0.6)
    assert precision_recall(real, fake, k=k) == pytest.approx(_brute_force_pr(real, fake, k))
    # small blocks exercise the chunked distance computation
    assert precision_recall(real, fake, k=k, max_block_bytes=8 * 40 * 3) == pytest.approx(_brute_force_pr(real, fake, k))


def test_precision_recall_extremes():
    x = _gaussian(50, 4, 0)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(x[:3], x)


# --------------------------------------------------------------------------- IS and accuracy

def test_inception_score_limits():
    uniform = torch.zeros(40, 7)
    assert inception_score(uniform, splits=4)[0] == pytest.approx(1.0)
    confident = torch.full((40, 8), -1e4)
    confident[torch.arange(40), torch.arange(40) % 8] = 0.0  # one-hot, all classes equally often
    mean, std = inception_score(confident, splits=5)
    assert mean == pytest.approx(8.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_class_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert class_accuracy(logits, [0, 1, 1, 1]) == 0.75


# --------------------------------------------------------------------------- groups

@pytest.mark.parametrize("num_classes", [10, 100, 200, 1000])
def test_head_body_tail_cover_the_classes_in_order(num_classes):
    groups = class_groups(num_classes)
    assert list(groups) == ["head", "body", "tail"]
    flat = groups["head"] + groups["body"] + groups["tail"]
    assert flat == list(range(num_classes))  # sizes add up, head first
    sizes = [len(g) for g in groups.values()]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    if num_classes == 10:
        assert sizes == [4, 3, 3]


def test_count_groups_thresholds():
    groups = count_groups([5000, 101, 100, 20, 19, 5])
    assert groups == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}


def test_stratified_subset_is_balanced():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 4)
    chosen = stratified_subset(labels, 30, seed=1)
    assert len(chosen) == 30 and len(set(chosen)) == 30
    assert np.bincount(labels[chosen]).tolist() == [13, 13, 4]
    assert (stratified_subset(labels, None) == np.arange(len(labels))).all()


# --------------------------------------------------------------------------- evaluate, cache, proxy

class CountingNet(RandomFeatureNet):
    """The random network, counting how many images went through it."""

    def __init__(self, **kwargs):
        super().__init__(progress=False, **kwargs)
        self.images_seen = 0

    def _forward(self, x):
        self.images_seen += len(x)
        return super()._forward(x)


def _toy_data(n_per_class=12, num_classes=10, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    # class-dependent brightness so that groups differ a little
    base = (labels[:, None, None, None] * 20).astype(np.int64)
    images = np.clip(base + rng.integers(0, 80, (len(labels), size, size, channels)), 0, 255).astype(np.uint8)
    return images, labels


def test_reference_cache_is_reused_and_rebuilt_for_another_network(tmp_path):
    images, labels = _toy_data()
    ref = Reference(images, labels, key="toy-train-8px-3ch")
    net = CountingNet(seed=0)
    first = reference_features(ref, net, tmp_path)
    assert first.cache_status == "written" and net.images_seen == len(labels)
    second = reference_features(ref, net, tmp_path)
    assert second.cache_status == "hit" and net.images_seen == len(labels)  # nothing extracted again
    np.testing.assert_array_equal(first.features, second.features)

    other = CountingNet(seed=1)  # other weights: other key, never the first file
    third = reference_features(ref, other, tmp_path)
    assert third.cache_status in ("written", "rebuilt") and other.images_seen == len(labels)
    assert not np.allclose(third.features, first.features)

    # A file under the expected name but made for another network is detected by its stored key.
    planted = CountingNet(seed=2)
    target = reference_features(ref, planted, tmp_path).path
    target.write_bytes(first.path.read_bytes())
    again = reference_features(ref, planted, tmp_path)
    assert again.cache_status == "rebuilt" and planted.images_seen == 2 * len(labels)
    assert reference_features(ref, planted, tmp_path).cache_status == "hit"


def test_the_cache_is_shared_by_seeds_unless_a_cap_makes_them_pick_other_images(tmp_path):
    images, labels = _toy_data()
    ref = Reference(images, labels, key="toy")
    net = CountingNet()
    assert reference_features(ref, net, tmp_path, seed=0).cache_status == "written"
    for seed, cap in ((1, None), (2, len(labels)), (3, 10 * len(labels))):  # every image, whatever the seed
        assert reference_features(ref, net, tmp_path, max_reference=cap, seed=seed).cache_status == "hit"
    capped = [reference_features(ref, net, tmp_path, max_reference=50, seed=seed) for seed in (0, 1)]
    assert [c.cache_status for c in capped] == ["written", "written"] and capped[0].path != capped[1].path
    assert not np.array_equal(capped[0].indices, capped[1].indices)
    assert net.images_seen == len(labels) + 2 * 50


def test_cache_key_changes_with_the_data(tmp_path):
    images, labels = _toy_data()
    net = CountingNet()
    reference_features(Reference(images, labels, key="toy"), net, tmp_path)
    changed = images.copy()
    changed[0] = 255 - changed[0]
    assert reference_features(Reference(changed, labels, key="toy"), net, tmp_path).cache_status == "rebuilt"


def test_evaluate_end_to_end_writes_metrics_with_provenance(tmp_path):
    ref_images, ref_labels = _toy_data(seed=0)
    gen_images, gen_labels = _toy_data(n_per_class=6, seed=1)
    net = CountingNet()
    counts = [500, 300, 180, 100, 60, 40, 20, 12, 8, 5]
    result = evaluate(gen_images, gen_labels, Reference(ref_images, ref_labels, key="toy"), counts, net,
                      cache_dir=tmp_path / "cache", kid_subsets=5)
    assert net.images_seen == len(ref_labels) + len(gen_labels)  # each image set once
    overall = result["overall"]
    assert overall["n_gen"] == 60 and overall["n_ref"] == 120
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall", "class_accuracy", "inception_score_mean"):
        assert np.isfinite(overall[key])
    assert list(result["groups"]) == ["head", "body", "tail"]
    assert result["groups"]["head"]["classes"] == [0, 1, 2, 3]
    assert (result["groups"]["head"]["n_gen"], result["groups"]["head"]["n_ref"]) == (24, 48)
    assert result["groups"]["head"]["n_ref_pr"] == 24  # precision/recall on equal-sized sets
    assert len(result["per_class"]) == 10 and result["per_class"][9]["train_count"] == 5
    assert all(row["rank_deficient"] for row in result["per_class"])  # 6 images, 32 dimensions
    assert result["skipped"] == []

    provenance = {"checkpoint": "runs/x/checkpoints/0001000.pt", "step": 1000, "ema": True, "sampler": "ddim",
                  "steps": 100, "guidance": 1.5, "seed": 7}
    paths = write_metrics(result, tmp_path / "eval", provenance)
    saved = json.loads(paths["json"].read_text())
    for key, value in provenance.items():
        assert saved["provenance"][key] == value
    assert saved["provenance"]["feature_net"] == "random"
    assert saved["provenance"]["feature_net_weights_hash"] == net.weights_hash
    assert saved["provenance"]["reference_size"] == 120
    assert set(saved["provenance"]["versions"]) >= {"torch", "numpy", "scipy", "ccua"}
    assert saved["overall"]["fid"] == pytest.approx(overall["fid"])
    markdown = paths["markdown"].read_text()
    assert "| overall | 60/120 |" in markdown and "head (4 cl.)" in markdown and "guidance: 1.5" in markdown
    assert format_table(result).count("\n") > 10

    again = evaluate(gen_images, gen_labels, Reference(ref_images, ref_labels, key="toy"), counts, net,
                     cache_dir=tmp_path / "cache", kid_subsets=5, group_mode="counts")
    assert again["reference"]["cache"] == "hit"
    assert list(again["groups"]) == ["many", "medium", "few"]


def test_groups_and_classes_with_fewer_than_two_images_are_skipped():
    ref_images, ref_labels = _toy_data(seed=0)
    gen_images, gen_labels = _toy_data(n_per_class=4, seed=1)
    keep = gen_labels < 7  # no tail images at all ...
    gen_images, gen_labels = gen_images[keep], gen_labels[keep]
    gen_images = np.concatenate([gen_images, gen_images[:1]])
    gen_labels = np.concatenate([gen_labels, [8]])  # ... except a single one of class 8
    result = evaluate(gen_images, gen_labels, Reference(ref_images, ref_labels), None, CountingNet(), kid_subsets=3)
    skipped = {(s["scope"], s["name"]): s for s in result["skipped"]}
    assert ("class", "8") in skipped and skipped[("class", "8")]["n_gen"] == 1
    assert ("class", "7") in skipped and ("class", "9") in skipped
    assert "tail" not in result["groups"] and "body" in result["groups"]
    tail = result["groups"].get("tail") or next(s for s in result["skipped"] if s["name"] == "tail")
    assert tail["n_gen"] == 1
    assert "(skipped)" in format_table(result)
    assert result["per_class"][0]["precision"] is not None  # 4 > k = 3


def test_wrong_size_generated_images_are_resized_with_a_warning(caplog):
    ref_images, ref_labels = _toy_data(size=8, channels=1)
    gen_images, gen_labels = _toy_data(n_per_class=3, size=12, channels=3)
    with caplog.at_level(logging.WARNING, logger="ccua.metrics"):
        result = evaluate(gen_images, gen_labels, Reference(ref_images, ref_labels), None, CountingNet(),
                          per_class=False, kid_subsets=2)
    text = " ".join(result["warnings"])
    assert "12x12" in text and "resized" in text and "grey" in text
    assert any("resized" in r.getMessage() for r in caplog.records)
    assert result["generated"]["input_shape"] == [3, 12, 12]
    assert result["generated"]["image_shape"] == [1, 8, 8]


def test_bad_inputs_give_clear_errors():
    ref_images, ref_labels = _toy_data()
    ref = Reference(ref_images, ref_labels)
    net = CountingNet()
    with pytest.raises(ValueError, match="gen_labels is required"):
        evaluate(ref_images, None, ref, None, net)
    with pytest.raises(ValueError, match="one label per image"):
        evaluate(ref_images, ref_labels[:5], ref, None, net)
    two_channel_ref = Reference(np.zeros((8, 8, 8, 2), np.uint8), np.arange(8) % 4)
    with pytest.raises(ValueError, match="no sensible conversion"):
        evaluate(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 2, 3], two_channel_ref, None, net)
    with pytest.raises(ValueError, match="train_class_counts"):
        evaluate(ref_images, ref_labels, ref, None, net, group_mode="counts")
    with pytest.raises(TypeError, match="uint8"):
        evaluate(ref_images.astype(np.float32), ref_labels, ref, None, net)
    with pytest.raises(ValueError, match="reference_labels"):
        evaluate(ref_images, ref_labels, ref_images, None, net)


def test_evaluate_accepts_a_long_tail_dataset_as_reference(tmp_path):
    images, labels = _toy_data(size=8, channels=1)
    dataset = LongTailDataset(ArraySource(images, labels, 10), np.arange(len(labels)), 8, 1)
    gen_images, gen_labels = _toy_data(n_per_class=3, size=8, channels=1, seed=3)
    result = evaluate(gen_images[..., 0], gen_labels, dataset, None, CountingNet(), cache_dir=tmp_path,
                      reference_key="toy-train-8px-1ch", per_class=False, kid_subsets=2)
    assert result["reference"]["cache"] == "written" and result["reference"]["key"] == "toy-train-8px-1ch"
    assert not any("resized" in w or "channel" in w for w in result["warnings"])


def test_proxy_fid_computes_reference_statistics_once():
    ref_images, ref_labels = _toy_data(n_per_class=20)
    net = CountingNet()
    proxy = ProxyFID(Reference(ref_images, ref_labels), net, num_samples=100)
    assert net.images_seen == 100
    near = proxy(ref_images[::3], ref_labels[::3])
    far = proxy(np.full_like(ref_images[:40], 255), ref_labels[:40])
    assert net.images_seen == 100 + len(ref_images[::3]) + 40  # no reference work per call
    assert 0 <= near < far


def test_one_loop_scores_overall_groups_and_classes_from_one_mapping_of_subsets():
    from ccua.metrics.evaluate import score_subsets, subsets

    parts = subsets({"head": [0, 1], "tail": []}, num_classes=3, per_class=True, class_names=["a", "b"],
                    counts=[9, 5, 1])
    assert [(p.scope, p.name, p.classes) for p in parts] == [
        ("overall", "overall", None), ("group", "head", [0, 1]), ("group", "tail", []),
        ("class", "a", [0]), ("class", "b", [1]), ("class", "2", [2])]
    assert parts[3].row == {"class": 0, "name": "a", "train_count": 9}
    rng = np.random.default_rng(0)
    labels = np.array([0] * 6 + [1] * 6 + [2])  # class 2: one generated image, too few
    ref_labels = np.repeat(np.arange(3), 8)
    gen_f, ref_f = rng.normal(size=(len(labels), 4)), rng.normal(size=(len(ref_labels), 4))
    settings = {"kid_subsets": 2, "kid_subset_size": 3, "seed": 0, "pr_k": 3, "pr_reference": "match"}
    scored, skipped = score_subsets(parts, gen_f, None, labels, ref_f, ref_labels, RandomFeatureNet(progress=False),
                                    settings)
    assert [(p.scope, p.name) for p, _ in scored] == [("overall", "overall"), ("group", "head"), ("class", "a"),
                                                       ("class", "b")]
    assert [(p.name, row["n_gen"], row["n_ref"]) for p, row in scored] == [
        ("overall", 13, 24), ("head", 12, 16), ("a", 6, 8), ("b", 6, 8)]
    # each subset's FID is the FID of its slice of the features
    head = fid_from_features(ref_f[ref_labels < 2], gen_f[labels < 2]).value
    assert scored[1][1]["fid"] == pytest.approx(head)
    assert skipped == [
        {"scope": "group", "name": "tail", "classes": [], "n_gen": 0, "n_ref": 0, "reason": "no classes in this group"},
        {"scope": "class", "name": "2", "class": 2, "n_gen": 1, "n_ref": 8,
         "reason": "1 generated and 8 reference images (at least 2 of each are needed)"}]
