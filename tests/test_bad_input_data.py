"""Bad data and sample files: each ends in one clear line (or is handled), nothing is silently wrong.

The command line runs in-process (``ccua.cli.main``): exit status 2, exactly one ``ccua: error:``
line naming the problem, no traceback.
"""

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from ccua.cli import main
from ccua.config import DataConfig, config_from_dict
from ccua.data import DataError, build_training_set, load_source
from ccua.data import sources
from tests.conftest import tiny_config_dict
from tests.test_data import _write_cifar


def _one_error_line(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ccua: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- CIFAR download

@pytest.fixture
def cifar_server(tmp_path, monkeypatch):
    """A local 'server' folder holding a CIFAR-10 tarball; the download URL and md5 point to it."""
    served = tmp_path / "server"
    served.mkdir()
    archive = _write_cifar(served)
    monkeypatch.setitem(sources.CIFAR_URLS, "cifar10", archive.as_uri())
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar10", hashlib.md5(archive.read_bytes()).hexdigest())
    for variable in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    return archive


def test_download_is_checked_and_renamed_into_place(cifar_server, tmp_path):
    root = tmp_path / "data"
    source = load_source("cifar10", str(root), "train", download=True)
    assert len(source) == 10
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # no temporary file left
    assert (root / "cifar-10-python.tar.gz").read_bytes() == cifar_server.read_bytes()


def test_a_corrupt_download_never_takes_the_final_name(cifar_server, tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar10", "0" * 32)
    with pytest.raises(DataError, match="corrupt.*retry"):
        load_source("cifar10", str(root), "train", download=True)
    assert list(root.iterdir()) == []
    monkeypatch.undo()  # the right checksum again: the next attempt is not poisoned
    monkeypatch.setitem(sources.CIFAR_URLS, "cifar10", cifar_server.as_uri())
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar10", hashlib.md5(cifar_server.read_bytes()).hexdigest())
    assert len(load_source("cifar10", str(root), "test", download=True)) == 3


def test_no_network_is_one_line(cifar_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sources.CIFAR_URLS, "cifar10", (tmp_path / "nowhere.tar.gz").as_uri())
    assert main(["data", "cifar10_lt", f"data.root={tmp_path / 'data'}", "data.download=true"]) == 2
    _one_error_line(capsys, "cannot download", "nowhere.tar.gz")
    assert not any((tmp_path / "data").iterdir())


def test_a_truncated_archive_says_delete_and_retry(tmp_path, capsys):
    archive = _write_cifar(tmp_path)
    archive.write_bytes(archive.read_bytes()[:300])
    assert main(["data", "cifar10_lt", f"data.root={tmp_path}"]) == 2
    _one_error_line(capsys, f"delete {archive} and retry")


def test_only_process_0_downloads_the_others_wait(cifar_server, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setitem(sources.CIFAR_URLS, "cifar10", (tmp_path / "nowhere").as_uri())  # a download would fail
    monkeypatch.setenv("LOCAL_RANK", "1")
    threading.Timer(0.3, lambda: (root / cifar_server.name).write_bytes(cifar_server.read_bytes())).start()
    assert len(load_source("cifar10", str(root), "test", download=True)) == 3
    monkeypatch.setattr(sources, "DOWNLOAD_WAIT_S", 0.2)
    with pytest.raises(DataError, match="waited"):
        load_source("cifar10", str(tmp_path / "empty"), "test", download=True)


# --------------------------------------------------------------------------- image folders

def _pngs(folder, n, size=5):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(folder / f"img{i}.png")


def test_hidden_files_and_folders_are_not_data(image_folder):
    _pngs(image_folder / ".ipynb_checkpoints", 2)
    _pngs(image_folder / "__MACOSX" / "class_0", 1)
    (image_folder / "class_0" / "._img0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    _pngs(image_folder / "class_1" / ".thumbs", 2)
    source = load_source("image_folder", str(image_folder))
    assert source.class_names == ["class_0", "class_1", "class_2"]
    assert np.bincount(source.labels).tolist() == [6, 4, 2]


def test_symlinked_folders_and_upper_case_extensions(image_folder, tmp_path):
    _pngs(tmp_path / "elsewhere", 2)
    os.symlink(tmp_path / "elsewhere", image_folder / "class_1" / "more")  # a folder linked into a class
    os.symlink(image_folder / "class_2", image_folder / "class_2" / "loop")  # a cycle must not hang
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image_folder / "class_2" / "UPPER.PNG")
    os.symlink(tmp_path / "elsewhere", image_folder / "linked_class")
    # folders elsewhere are read only when the user says so
    source = load_source("image_folder", str(image_folder), image_folder={"allow_outside_root": True})
    assert source.class_names == ["class_0", "class_1", "class_2", "linked_class"]
    assert np.bincount(source.labels).tolist() == [6, 6, 3, 2]
    with pytest.raises(DataError, match="outside data.root.*data.image_folder.allow_outside_root=true"):
        load_source("image_folder", str(image_folder))


def test_profile_errors_name_the_class_folder(image_folder):
    config = DataConfig(name="image_folder", root=str(image_folder), imbalance=0.5, n_max=6, resolution=8)
    with pytest.raises(DataError, match=r"class 2 \('class_2'\) has 2 images, fewer than the 3"):
        build_training_set(config)


SPLIT_CASES = {
    "negative": ("class_0/img0.png 0\nclass_0/img1.png -1\n", ":2: label -1 is negative"),
    "not an integer": ("class_0/img0.png 0\r\nclass_0/img1.png 1.5\r\n", ":2: label '1.5' is not an integer"),
    "missing file": ("class_0/img0.png 0\nclass_0/nothing.png 1\n", "1 of 2 listed files are missing"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_bad_split_file_lines_are_one_line_with_the_line_number(image_folder, tmp_path, capsys, case):
    text, expected = SPLIT_CASES[case]
    split = tmp_path / "split.txt"
    split.write_text(text, newline="")
    assert main(["data", "data.name=image_folder", f"data.root={image_folder}", f"data.image_folder.split_file={split}",
                 "data.imbalance=null"]) == 2
    _one_error_line(capsys, str(split), expected)


def test_test_split_labels_beyond_the_training_classes(image_folder, tmp_path):
    (tmp_path / "test.txt").write_text("class_0/img0.png 0\nclass_2/img0.png 3\n")
    with pytest.raises(DataError, match=r"test.txt:2: label 3 is beyond the 3 classes"):
        load_source("image_folder", str(image_folder), "test",
                    image_folder={"test_split_file": str(tmp_path / "test.txt")})


def test_windows_split_file_with_bom_and_crlf(image_folder, tmp_path):
    split = tmp_path / "split.txt"
    split.write_bytes("class_2/img0.png 0\r\nclass_0/img1.png 1\r\n".encode("utf-8-sig"))
    source = load_source("image_folder", str(image_folder), image_folder={"split_file": str(split)})
    assert source.paths == ["class_2/img0.png", "class_0/img1.png"] and source.labels.tolist() == [0, 1]
    assert source.image(0)[..., 2].min() == 255


def test_an_error_in_a_dataloader_worker_is_one_line(image_folder):
    (image_folder / "class_1" / "img0.png").write_bytes(b"not a png")
    dataset = build_training_set(DataConfig(name="image_folder", root=str(image_folder), imbalance=None,
                                            resolution=8))
    loader = DataLoader(dataset, batch_size=12, num_workers=1)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"cannot read image file {image_folder / 'class_1' / 'img0.png'}")
    assert message.endswith("(in DataLoader worker process 0)")


def test_verify_lists_every_unreadable_file(image_folder, capsys):
    (image_folder / "class_1" / "img0.png").write_bytes(b"not a png")
    good = (image_folder / "class_2" / "img1.png").read_bytes()
    (image_folder / "class_2" / "img1.png").write_bytes(good[: len(good) // 2])  # truncated
    args = ["data", "data.name=image_folder", f"data.root={image_folder}", "data.resolution=8", "data.imbalance=null"]
    assert main(args + ["--verify"]) == 2
    out = capsys.readouterr()
    listed = [line for line in out.out.splitlines() if line.startswith("unreadable:")]
    assert len(listed) == 2 and "class_1/img0.png" in listed[0] and "class_2/img1.png" in listed[1]
    assert out.err.count("ccua: error: 2 of 12 image files cannot be read") == 1
    # the same check before a training: it stops before any run folder is made
    runs = image_folder.parent / "verify_runs"
    assert main(["train", "--verify", "fashion_mnist_lt", f"train.out_dir={runs}"] + args[1:]) == 2
    assert "2 of 12 image files cannot be read" in capsys.readouterr().err and not runs.exists()
    (image_folder / "class_1" / "img0.png").unlink()
    (image_folder / "class_2" / "img1.png").write_bytes(good)
    assert main(["data", "--verify"] + args[1:]) == 0  # the option also works before the overrides
    assert "verified: all 11 image files can be read" in capsys.readouterr().out


def test_unsafe_pickle_is_one_line(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    assert main(["data", "cifar10_lt", f"data.root={tmp_path}"]) == 2
    _one_error_line(capsys, "refusing to unpickle")


# --------------------------------------------------------------------------- sample sets

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(folder / "runs", train={"steps": 1, "ckpt_every": 0})))
    assert main(["train", str(config)]) == 0
    return folder / "runs" / "000-tiny"


def test_sampling_into_a_non_empty_folder_needs_overwrite(trained_run, tmp_path, capsys):
    out = tmp_path / "samples"
    (out / "png").mkdir(parents=True)
    (out / "png" / "009999_c3.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    args = ["sample", str(trained_run), "--out", str(out), "--per-class", "1", "--steps", "1"]
    assert main(args) == 2
    _one_error_line(capsys, f"output folder {out} is not empty", "--overwrite")
    assert (out / "png" / "009999_c3.png").exists()
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in (out / "png").iterdir()) == [f"{i:06d}_c{i}.png" for i in range(10)]
    assert (out / "notes.txt").read_text() == "mine"  # only what sampling writes is replaced


def _bad_npz(path, case):
    images = np.zeros((4, 6, 6, 3), np.uint8)
    labels = np.array([0, 1, 2, 0])
    if case == "float images":
        np.savez(path, arr_0=images.astype(np.float32) / 255, arr_1=labels)
    elif case == "int64 images":
        np.savez(path, images=images.astype(np.int64), labels=labels)
    elif case == "no images":
        np.savez(path, samples=images, labels=labels)
    elif case == "fractional labels":
        np.savez(path, arr_0=images, arr_1=np.array([0.0, 1.5, 2.0, 0.0]))
    elif case == "text file":
        path.write_text("these are not samples\n")
    elif case == "single array":
        with open(path, "wb") as handle:
            np.save(handle, images)
    elif case == "no labels":
        np.savez(path, arr_0=images)


NPZ_CASES = {
    "float images": "arr_0 is float32, expected uint8",
    "int64 images": "images is int64, expected uint8",
    "no images": "has no image array: expected arr_0 (as DiT/ADM write it) or images; it holds samples, labels",
    "fractional labels": "arr_1 must hold integer class indices, got float64 values such as 1.5",
    "text file": "is not an .npz archive",
    "single array": "holds a single array, not an .npz archive",
    "no labels": "has no labels (arr_1 or labels)",
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_bad_sample_files_are_one_line(tmp_path, capsys, case):
    path = tmp_path / "samples.npz"
    _bad_npz(path, case)
    assert main(["evaluate", str(path), "data.name=fashion_mnist", "--features", "random"]) == 2
    _one_error_line(capsys, str(path), NPZ_CASES[case])


def test_a_text_file_named_npz_through_the_real_command(tmp_path):
    path = tmp_path / "samples.npz"
    path.write_text("not an archive")
    result = subprocess.run([sys.executable, "-m", "ccua.cli", "evaluate", str(path), "--features", "random"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("ccua:")] == [
        f"ccua: error: {path} is not an .npz archive (a zip of .npy arrays as np.savez writes): expected arr_0 "
        "(uint8 images, NHWC) and arr_1 (labels)"]


def test_bad_reference_statistics_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "samples.npz", arr_0=np.zeros((4, 6, 6, 3), np.uint8))
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(32))
    args = ["evaluate", str(tmp_path / "samples.npz"), "--features", "random", "--reference-stats"]
    assert main(args + [str(tmp_path / "no_sigma.npz")]) == 2
    _one_error_line(capsys, "no_sigma.npz has no sigma array (it holds mu)")
    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    assert main(args + [str(tmp_path / "inception.npz")]) == 2
    _one_error_line(capsys, "holds 2048-d statistics but the random features are 32-d", "--features inception")


# --------------------------------------------------------------------------- train/ and test/ class folders

def _class_tree(root, classes: dict[str, int]) -> None:
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((6, 6, 3), 10 * i, np.uint8)).save(folder / f"{i}.png")


def test_a_test_folder_of_class_folders_is_the_test_split(tmp_path, capsys):
    _class_tree(tmp_path / "train", {"cat": 6, "dog": 3, "eel": 2})
    _class_tree(tmp_path / "test", {"dog": 2, "cat": 2, "eel": 2})
    test = load_source("image_folder", str(tmp_path / "train"), "test",
                       image_folder={"test_root": str(tmp_path / "test")})
    assert test.class_names == ["cat", "dog", "eel"] and np.bincount(test.labels).tolist() == [2, 2, 2]
    assert all(Path(test.root / p).parent.name == test.class_names[label] for p, label in zip(test.paths, test.labels))
    settings = ["fashion_mnist_lt", "data.name=image_folder", f"data.root={tmp_path / 'train'}", "data.imbalance=null",
                f"data.image_folder.test_root={tmp_path / 'test'}", "data.resolution=8"]
    out = tmp_path / "classifier.pt"
    assert main(["features", "train", *settings, "--out", str(out), "--epochs", "1", "--batch-size", "4"]) == 0
    assert out.exists()
    import ccua  # the test folder is the reference of `--reference test`; near-copies use the training folder

    data = config_from_dict({"data": {"name": "image_folder", "root": str(tmp_path / "train"), "imbalance": None,
                                      "resolution": 8, "image_folder": {"test_root": str(tmp_path / "test")}}}).data
    scores = ccua.evaluate_samples(np.zeros((6, 8, 8, 3), np.uint8), [0, 0, 1, 1, 2, 2], data=data,
                                   features="random", reference="test")
    assert scores.raw["reference"]["n"] == 6 and str(tmp_path / "test") in scores.raw["reference"]["source"]
    assert scores.raw["memorisation"]["groups"]["head"]["n_train"] == 6  # the training folder's cat images


@pytest.mark.parametrize("extra, missing, message", [
    ({"fox": 1}, None, "has class 'fox', which the training folder"),
    ({}, "eel", "class 'eel' has no folder in"),
])
def test_a_class_on_one_side_only_is_named(tmp_path, extra, missing, message):
    _class_tree(tmp_path / "train", {"cat": 2, "dog": 2, "eel": 2})
    _class_tree(tmp_path / "test", {name: 1 for name in ("cat", "dog", "eel") if name != missing} | extra)
    with pytest.raises(DataError, match=message):
        load_source("image_folder", str(tmp_path / "train"), "test", image_folder={"test_root": str(tmp_path / "test")})
