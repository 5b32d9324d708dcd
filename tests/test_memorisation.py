"""The near-copy (memorisation) measure on sets built to contain copies, and on real held-out images."""

from __future__ import annotations

import numpy as np
import pytest

from ccua.config import DataConfig
from ccua.data import build_reference_set, build_training_set
from ccua.metrics.memorisation import CopyTest, memorisation, nearest_neighbour_ratios


def _training_set(rng: np.random.RandomState, per_class: list[int], side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    images = rng.randint(0, 256, (sum(per_class), 1, side, side)).astype(np.uint8)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    return images, labels


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved by (dy, dx) pixels, the uncovered border filled with its edge values."""
    height, width = image.shape[-2:]
    padded = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(2, 2), (2, 2)], mode="edge")
    return padded[..., 2 - dy: 2 - dy + height, 2 - dx: 2 - dx + width]


def test_exact_and_noisy_copies_are_found_and_new_images_are_not():
    rng = np.random.RandomState(0)
    train, train_labels = _training_set(rng, [20, 5])
    tail = np.flatnonzero(train_labels == 1)
    copies = train[tail[:3]]
    noisy = np.clip(train[tail[3:5]].astype(int) + rng.randint(-6, 7, (2, 1, 8, 8)), 0, 255).astype(np.uint8)
    # new images: averages of two training images of the class lie between them (ratio near 1)
    head = np.flatnonzero(train_labels == 0)
    blends = ((train[head[:10]].astype(int) + train[head[10:20]].astype(int)) // 2).astype(np.uint8)
    generated = np.concatenate([copies, noisy, blends])
    labels = np.array([1] * 5 + [0] * 10)
    result = memorisation(generated, labels, train, train_labels, groups={"head": [0], "tail": [1]})
    tail_row = result["groups"]["tail"]
    assert (tail_row["n"], tail_row["copies"], tail_row["copy_share"]) == (5, 5, 1.0)
    assert tail_row["median_ratio"] < 0.1
    assert tail_row["distinct_nearest"] == 5 and tail_row["n_train"] == 5
    assert result["groups"]["head"]["copies"] == 0 and result["groups"]["head"]["median_ratio"] > 0.6
    assert result["overall"]["copy_share"] == pytest.approx(5 / 15)
    assert {row["class"]: row["n_train"] for row in result["per_class"]} == {0: 20, 1: 5}
    assert result["whole_set"]["groups"]["tail"]["copies"] == 5
    assert result["test"] == {"threshold": pytest.approx(1 / 3), "max_shift": 2, "mirror": True}


def test_ratios_and_nearest_index_by_hand():
    train = np.zeros((3, 1, 1, 2), dtype=np.uint8)
    train[1, 0, 0] = [255, 0]
    train[2, 0, 0] = [0, 255]
    generated = np.array([[[[51, 0]]]], dtype=np.uint8)  # 0.2 from image 0, 0.8 from image 1
    found = nearest_neighbour_ratios(generated, train, CopyTest(max_shift=0, mirror=False))
    assert found["nearest"][0] == 0
    assert found["d1"][0] == pytest.approx(0.2, abs=1e-6)
    assert found["d2"][0] == pytest.approx(0.8, abs=1e-6)
    assert found["ratio"][0] == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("dy, dx, mirror", [(0, 1, False), (1, 0, False), (-2, 1, False), (2, -2, False),
                                            (0, 0, True), (1, -1, True)])
def test_shifted_and_mirrored_copies_are_caught(dy, dx, mirror):
    """Every copy moved by up to 2 pixels, mirrored or not, is a near-copy of its source (>= 90%
    required; all of them are); the pixel-exact test of the literature misses them."""
    rng = np.random.RandomState(3)
    train, train_labels = _training_set(rng, [12, 12], side=16)
    sources = np.arange(0, 24, 2)
    copies = _shifted(train[sources], dy, dx)
    if mirror:
        copies = np.ascontiguousarray(copies[..., ::-1])
    result = memorisation(copies, train_labels[sources], train, train_labels, groups={"all": [0, 1]})
    assert result["groups"]["all"]["copy_share"] >= 0.9
    found = nearest_neighbour_ratios(copies, train)
    assert (found["nearest"] == sources).mean() >= 0.9
    exact = memorisation(copies, train_labels[sources], train, train_labels, test=CopyTest(max_shift=0, mirror=False))
    assert exact["overall"]["copy_share"] < 0.5  # what the shift- and mirror-aware search adds


def test_a_copy_of_another_class_is_found_by_the_whole_set_search():
    rng = np.random.RandomState(4)
    train, train_labels = _training_set(rng, [6, 6], side=12)
    generated = _shifted(train[[0, 1]], 1, 1)  # copies of class 0 images, labelled as class 1
    result = memorisation(generated, np.array([1, 1]), train, train_labels, groups={"c1": [1]})
    assert result["groups"]["c1"]["copies"] == 0
    assert result["whole_set"]["groups"]["c1"]["copies"] == 2
    assert result["whole_set"]["groups"]["c1"]["copies_of_other_class"] == 2


def test_samples_collapsing_onto_one_image_show_in_the_distinct_nearest_count():
    rng = np.random.RandomState(5)
    train, train_labels = _training_set(rng, [10], side=12)
    noisy = np.clip(train[[3] * 8].astype(int) + rng.randint(-90, 91, (8, 1, 12, 12)), 0, 255).astype(np.uint8)
    result = memorisation(noisy, np.zeros(8, int), train, train_labels, groups={"all": [0]})
    assert result["groups"]["all"]["distinct_nearest"] == 1
    assert result["per_class"][0]["distinct_nearest"] == 1


def test_a_class_with_one_training_image_is_skipped_not_guessed():
    rng = np.random.RandomState(2)
    train, train_labels = _training_set(rng, [4, 1])
    result = memorisation(train[[0, 4]], np.array([0, 1]), train, train_labels, groups={"all": [0, 1]})
    assert result["skipped_classes"] == [1]
    assert result["groups"]["all"]["n"] == 1


def test_real_held_out_images_are_not_copies_and_their_copies_are():
    """Fashion-MNIST at 16x16 with a 300-image head (3 tail images): test-split images of the same
    classes are new images (<= 10% flagged, within the class or the whole set); shifted and mirrored
    copies of the training images are caught (>= 90%)."""
    data = DataConfig(name="fashion_mnist", resolution=16, imbalance=0.01, n_max=300)
    train = build_training_set(data)
    train_images = np.stack([np.asarray(train.uint8_image(i)) for i in range(len(train))])
    test = build_reference_set(DataConfig(name="fashion_mnist", resolution=16, imbalance=None), "test")
    picks = np.concatenate([np.flatnonzero(np.asarray(test.labels) == c)[:30] for c in range(10)])
    held_out = np.stack([np.asarray(test.uint8_image(int(i))) for i in picks])
    fresh = memorisation(held_out, np.asarray(test.labels)[picks], train_images, train.labels)
    assert fresh["overall"]["copy_share"] <= 0.10
    assert fresh["whole_set"]["overall"]["copy_share"] <= 0.10
    rng = np.random.RandomState(6)
    sources = rng.choice(len(train), 100, replace=False)
    moved = np.stack([_shifted(train_images[i], *rng.randint(-2, 3, 2)) for i in sources])
    moved[::2] = moved[::2, ..., ::-1]
    copies = memorisation(moved, np.asarray(train.labels)[sources], train_images, train.labels)
    assert copies["overall"]["copy_share"] >= 0.9
