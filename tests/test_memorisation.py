"""The near-copy (memorisation) measure on sets built to contain copies."""

from __future__ import annotations

import numpy as np
import pytest

from ccua.metrics.memorisation import memorisation, nearest_neighbour_ratios


def _training_set(rng: np.random.RandomState, per_class: list[int]) -> tuple[np.ndarray, np.ndarray]:
    images = rng.randint(0, 256, (sum(per_class), 1, 8, 8)).astype(np.uint8)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    return images, labels


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
    assert result["groups"]["head"]["copies"] == 0 and result["groups"]["head"]["median_ratio"] > 0.7
    assert result["overall"]["copy_share"] == pytest.approx(5 / 15)
    assert {row["class"]: row["n_train"] for row in result["per_class"]} == {0: 20, 1: 5}


def test_ratios_and_nearest_index_by_hand():
    train = np.zeros((3, 1, 1, 2), dtype=np.uint8)
    train[1, 0, 0] = [255, 0]
    train[2, 0, 0] = [0, 255]
    generated = np.array([[[[51, 0]]]], dtype=np.uint8)  # 0.2 from image 0, 0.8 from image 1
    found = nearest_neighbour_ratios(generated, train)
    assert found["nearest"][0] == 0
    assert found["d1"][0] == pytest.approx(0.2, abs=1e-6)
    assert found["d2"][0] == pytest.approx(0.8, abs=1e-6)
    assert found["ratio"][0] == pytest.approx(0.25, abs=1e-6)


def test_mirrored_copies_count_only_when_training_used_flips():
    rng = np.random.RandomState(1)
    train, train_labels = _training_set(rng, [6])
    mirrored = np.ascontiguousarray(train[:2, ..., ::-1])
    plain = memorisation(mirrored, np.zeros(2, int), train, train_labels)
    aware = memorisation(mirrored, np.zeros(2, int), train, train_labels, hflip=True)
    assert plain["overall"]["copies"] == 0
    assert aware["overall"]["copies"] == 2


def test_a_class_with_one_training_image_is_skipped_not_guessed():
    rng = np.random.RandomState(2)
    train, train_labels = _training_set(rng, [4, 1])
    result = memorisation(train[[0, 4]], np.array([0, 1]), train, train_labels, groups={"all": [0, 1]})
    assert result["skipped_classes"] == [1]
    assert result["groups"]["all"]["n"] == 1
