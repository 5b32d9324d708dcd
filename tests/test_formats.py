"""The field's data and sample formats: split files whose classes are in no order of frequency,
test splits, ADM/DiT sample files, published reference statistics, 16-bit and grey PNGs, and the
per-sample initial noise."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ccua.cli import main
from ccua.config import DataConfig, config_from_dict
from ccua.data import (DataError, ResumableBatchSampler, balanced_class_probabilities, build_training_set,
                       class_groups, load_source, load_split)
from ccua.data.longtail import classes_head_to_tail
from ccua.metrics import Reference, RandomFeatureNet, evaluate
from ccua.generate import initial_noise, load_sample_file, save_samples

# Training counts of the split-file folder below: class 2 is the head, class 0 the tail.
SPLIT_COUNTS = [2, 5, 20]


def _only_metrics(root):
    """The metrics.json of the one evaluation under ``root`` (its folder is named by its record)."""
    found = list(root.glob("*/metrics.json"))
    assert len(found) == 1, found
    return found[0]


def _write_pngs(folder, count, colour, size=6, mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(len(str(folder)) + count)
    for i in range(count):
        pixels = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
        pixels[..., colour] = 255
        image = Image.fromarray(pixels)
        (image.convert("L") if mode == "L" else image).save(folder / f"img{i}.png")


@pytest.fixture
def split_folder(tmp_path):
    """An ImageNet-LT-like folder: a long-tailed train split file (class 2 largest), a balanced test split."""
    root = tmp_path / "imagenet"
    train, test = [], []
    for c, n in enumerate(SPLIT_COUNTS):
        _write_pngs(root / "train" / f"n{c}", n, colour=c)
        _write_pngs(root / "val" / f"n{c}", 3, colour=c)
        train += [f"train/n{c}/img{i}.png {c}" for i in range(n)]
        test += [f"val/n{c}/img{i}.png {c}" for i in range(3)]
    (tmp_path / "LT_train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "LT_test.txt").write_text("\n".join(test) + "\n")
    folder = {"split_file": str(tmp_path / "LT_train.txt"), "test_split_file": str(tmp_path / "LT_test.txt")}
    return config_from_dict({"data": {"name": "image_folder", "root": str(root), "imbalance": None, "resolution": 8,
                                      "image_folder": folder}}).data


def _overrides(data: DataConfig) -> list[str]:
    return [f"data.{key}={value}" for key, value in (("name", data.name), ("root", data.root),
                                                     ("image_folder.split_file", data.image_folder.split_file),
                                                     ("image_folder.test_split_file",
                                                      data.image_folder.test_split_file),
                                                     ("imbalance", "null"), ("resolution", data.resolution))]


# --------------------------------------------------------------------------- ranking by training count

def test_one_ranking_by_training_count_with_ties_by_index():
    assert classes_head_to_tail([3, 40, 7, 40, 1, 12]) == [1, 3, 5, 2, 0, 4]
    assert class_groups(6, [3, 40, 7, 40, 1, 12]) == {"head": [1, 3], "body": [5, 2], "tail": [0, 4]}
    p = balanced_class_probabilities(3, 0.1, SPLIT_COUNTS)
    # rho^(rank / (C - 1)) with ranks 2, 1, 0 for classes 0, 1, 2
    assert p == pytest.approx(np.array([0.1, 0.1 ** 0.5, 1.0]) / (1.1 + 0.1 ** 0.5))


def test_balanced_resampling_of_a_split_file_favours_its_largest_class(split_folder):
    dataset = build_training_set(split_folder)
    assert dataset.class_counts() == SPLIT_COUNTS
    sampler = ResumableBatchSampler(dataset.labels, 3, global_batch_size=100, seed=0, balanced_rho=0.1)
    drawn = np.concatenate([dataset.labels[sampler.global_batch(step)] for step in range(30)])
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert share[2] > 0.6 and share[0] < 0.12  # expected 0.71 / 0.22 / 0.07 (head = class 2)


def test_cli_data_groups_classes_by_training_count(split_folder, capsys):
    assert main(["data", *_overrides(split_folder)]) == 0
    out = capsys.readouterr().out
    assert "head: classes 2, 20 images" in out and "tail: classes 0, 2 images" in out


def test_evaluate_groups_by_training_count_and_says_when_counts_are_unknown():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    ref_labels = np.repeat(np.arange(6), 10)
    gen = rng.integers(0, 256, (36, 8, 8, 3), dtype=np.uint8)
    gen_labels = np.repeat(np.arange(6), 6)
    net = RandomFeatureNet(progress=False)
    result = evaluate(gen, gen_labels, ref, [3, 40, 7, 40, 1, 12], net, reference_labels=ref_labels, per_class=False)
    assert result["groups"]["head"]["classes"] == [1, 3] and result["groups"]["tail"]["classes"] == [0, 4]
    assert result["group_ranking"] == "training count"
    unknown = evaluate(gen, gen_labels, ref, None, net, reference_labels=ref_labels, per_class=False)
    assert unknown["groups"]["head"]["classes"] == [0, 1]
    assert unknown["group_ranking"] == "class index (training counts unknown)"
    assert any("training class counts unknown" in w for w in unknown["warnings"])


# --------------------------------------------------------------------------- test split and reference

def test_test_split_file_is_read_for_the_test_split(split_folder):
    test = load_split(split_folder, "test")
    assert test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and test.paths[0] == "val/n0/img0.png"
    reference = Reference.from_config(split_folder, "test")
    assert reference.key.endswith("-LT_test") and reference.info["balanced"] is True
    long_tailed = Reference.from_config(split_folder, "train")
    assert long_tailed.info["balanced"] is False and "--reference test" in long_tailed.info["note"]
    without = dataclasses.replace(split_folder, sections={
        "image_folder": dataclasses.replace(split_folder.image_folder, test_split_file=None)})
    with pytest.raises(DataError, match="data.image_folder.test_split_file"):
        load_split(without, "test")


def test_an_imbalanced_reference_is_named_in_the_metrics(split_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = np.full((6, 6, 6, 3), 128, dtype=np.uint8)
    save_samples(tmp_path / "adm.npz", images, np.array([0, 0, 1, 1, 2, 2]))
    assert main(["evaluate", str(tmp_path / "adm.npz"), *_overrides(split_folder), "--features", "random"]) == 0
    metrics = json.loads(_only_metrics(tmp_path / "eval_adm").read_text())
    assert metrics["reference"]["balanced"] is False and metrics["reference"]["per_class_max"] == 20
    assert any("not balanced" in w and "--reference test" in w for w in metrics["warnings"])
    # the training counts come from the data config here (no sample_info.json): class 2 is the head
    assert metrics["groups"]["head"]["classes"] == [2]
    assert metrics["provenance"]["train_class_counts_source"].startswith("data config")


# --------------------------------------------------------------------------- sample files

def test_evaluate_reads_exactly_the_npz_named_in_either_layout(split_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "images.npz", images=rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8),
             labels=np.array([0, 0, 1, 1]))
    np.savez(tmp_path / "other.npz", arr_0=rng.integers(0, 256, (9, 6, 6, 3), dtype=np.uint8),
             arr_1=np.repeat(np.arange(3), 3))  # as DiT/ADM write samples
    args = [*_overrides(split_folder), "--features", "random", "--reference", "test"]
    assert main(["evaluate", str(tmp_path / "other.npz"), *args]) == 0
    other = json.loads(_only_metrics(tmp_path / "eval_other").read_text())
    assert other["generated"]["n"] == 9 and other["provenance"]["samples"] == str(tmp_path / "other.npz")
    assert main(["evaluate", str(tmp_path), *args]) == 0  # a folder: its images.npz, named keys
    named = json.loads(_only_metrics(tmp_path / "eval").read_text())
    assert named["generated"]["n"] == 4 and named["generated"]["per_class"] == [2, 2, 0]


def test_sample_files_are_written_in_the_adm_layout_and_read_back(tmp_path):
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    save_samples(tmp_path / "s.npz", images, np.array([3, 1]))
    with np.load(tmp_path / "s.npz") as data:
        assert sorted(data.files) == ["arr_0", "arr_1"] and np.array_equal(data["arr_0"], images)
    read, labels = load_sample_file(tmp_path / "s.npz")
    assert np.array_equal(read, images) and labels.tolist() == [3, 1]
    np.savez(tmp_path / "float_labels.npz", arr_0=images, arr_1=np.array([3.0, 1.0]))
    assert load_sample_file(tmp_path / "float_labels.npz")[1].tolist() == [3, 1]
    np.savez(tmp_path / "unlabelled.npz", arr_0=images)
    assert load_sample_file(tmp_path / "unlabelled.npz")[1] is None


def test_published_reference_statistics_give_the_overall_fid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    features = RandomFeatureNet(progress=False).features(images).double().numpy()
    np.savez(tmp_path / "ref.npz", mu=features.mean(0), sigma=np.cov(features, rowvar=False))
    np.savez(tmp_path / "samples.npz", arr_0=images)  # no labels: none are needed for the overall FID
    assert main(["evaluate", str(tmp_path / "samples.npz"), "--reference-stats", str(tmp_path / "ref.npz"),
                 "--features", "random"]) == 0
    metrics = json.loads(_only_metrics(tmp_path / "eval_samples").read_text())
    assert metrics["overall"]["fid"] == pytest.approx(0.0, abs=1e-6)  # the same images' statistics
    assert metrics["groups"] == {} and metrics["per_class"] == []
    assert "groups and per-class numbers need the reference images" in metrics["notes"]["reference_stats"]
    assert metrics["provenance"]["reference_stats"] == str(tmp_path / "ref.npz")
    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, mu=features.mean(0) + 0.5, sigma=np.cov(features, rowvar=False))
    assert main(["evaluate", str(tmp_path / "samples.npz"), "--reference-stats", str(shifted),
                 "--features", "random", "--out", str(tmp_path / "e2")]) == 0
    fid = json.loads((tmp_path / "e2" / "metrics.json").read_text())["overall"]["fid"]
    assert fid == pytest.approx(0.25 * features.shape[1], rel=1e-6)  # ||shift||^2


# --------------------------------------------------------------------------- PNG formats

def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    values = np.array([[0, 257 * 100, 65535], [257, 257 * 200, 30000]], dtype=np.uint16)
    (tmp_path / "a").mkdir()
    Image.fromarray(values).save(tmp_path / "a" / "deep.png")
    with Image.open(tmp_path / "a" / "deep.png") as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    image = load_source("image_folder", str(tmp_path)).image(0)
    assert image.shape == (2, 3, 1)
    assert image[..., 0].tolist() == [[0, 100, 255], [1, 200, 117]]


def test_grey_folder_trains_one_channel_and_colour_stays_three(tmp_path):
    for c in range(2):
        _write_pngs(tmp_path / "grey" / f"c{c}", 3, colour=c, mode="L")
    grey = build_training_set(DataConfig(name="image_folder", root=str(tmp_path / "grey"), imbalance=None,
                                         resolution=6))
    assert grey[0][0].shape == (1, 6, 6)
    forced = build_training_set(DataConfig(name="image_folder", root=str(tmp_path / "grey"), imbalance=None,
                                           resolution=6, channels=3))
    assert forced[0][0].shape == (3, 6, 6) and torch.equal(forced[0][0][0], forced[0][0][2])
    _write_pngs(tmp_path / "grey" / "c2", 3, colour=2)  # one colour class: the folder is colour
    mixed = build_training_set(DataConfig(name="image_folder", root=str(tmp_path / "grey"), imbalance=None,
                                          resolution=6))
    assert mixed[0][0].shape == (3, 6, 6)


# --------------------------------------------------------------------------- initial noise

def test_noise_of_sample_i_depends_only_on_seed_and_i():
    whole = initial_noise((7, 1, 3, 3), seed=5, start=10)
    for i in range(7):
        assert torch.equal(whole[i], initial_noise((1, 1, 3, 3), seed=5, start=10 + i)[0])
    assert torch.equal(whole[2:], initial_noise((5, 1, 3, 3), seed=5, start=12))
    # seeds that agree in their low 32 bits are still different streams
    assert not torch.equal(initial_noise((2, 4), seed=1), initial_noise((2, 4), seed=2**32 + 1))
    many = initial_noise((400, 3, 4, 4), seed=0)
    assert abs(float(many.mean())) < 0.03 and abs(float(many.std()) - 1) < 0.03


def test_noise_far_into_the_stream_costs_no_more_than_at_its_start():
    # Skipping by drawing and discarding would need 2**40 * 48 values here.
    far = initial_noise((2, 3, 4, 4), seed=0, start=2**40)
    assert far.shape == (2, 3, 4, 4) and torch.isfinite(far).all()
    assert not torch.equal(far[0], far[1])
