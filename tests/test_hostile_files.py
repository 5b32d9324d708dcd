"""Untrusted files and broken machines through the command line (in-process `ccua.cli.main`):
non-zero exit, exactly one `ccua: error:` line naming the file or option, no traceback, bounded
time and memory, nothing read outside the data root, earlier runs intact."""

from __future__ import annotations

import errno
import os
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ccua.cli import main
from tests.conftest import tiny_config_dict


def _run(argv: list[str], capsys, printed: list | None = None) -> tuple[int, str]:
    """(exit status, the one error line); what the command printed is appended to ``printed``."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors exit
        code = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("ccua: error:")]
    assert len(lines) == 1, err
    if printed is not None:
        printed.append(out)
    return code, lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real finished tiny run."""
    root = tmp_path_factory.mktemp("hostile")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(root / "runs", train={"steps": 2, "ckpt_every": 0})))
    assert main(["train", str(config)]) == 0
    return root / "runs" / "000-tiny"


def _pngs(folder: Path, count: int, value: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((6, 6, 3), value + i, np.uint8)).save(folder / f"img{i}.png")


def _folder_data(root: Path, **folder) -> list[str]:
    """The preset with data.* overrides reading the image folder ``root`` (``folder``: its own settings)."""
    settings = {"name": "image_folder", "root": str(root), "resolution": 8, "imbalance": "null",
                **{f"image_folder.{k}": v for k, v in folder.items()}}
    return ["fashion_mnist_lt", *[f"data.{k}={v}" for k, v in settings.items()]]


def _folder_config(root: Path, out: Path, **folder) -> list[str]:
    """:func:`_folder_data` and a tiny training into ``out``."""
    return [*_folder_data(root, **folder), f"train.out_dir={out}", "train.steps=1", "train.batch_size=2",
            "model.unet.ch=8", "train.progress=false"]


# --------------------------------------------------------------------------- nothing read outside the data

def test_split_file_paths_that_leave_the_root_are_refused_with_their_line(tmp_path, capsys):
    root = tmp_path / "data"
    _pngs(root / "a", 2)
    _pngs(tmp_path / "outside", 1)  # a real image just outside the root
    for line, shown in [("../outside/img0.png 1", "../outside/img0.png"),
                        (f"{tmp_path / 'outside' / 'img0.png'} 1", str(tmp_path / "outside" / "img0.png"))]:
        split = tmp_path / "split.txt"
        split.write_text(f"a/img0.png 0\n{line}\n")
        code, message = _run(["train", *_folder_config(root, tmp_path / "runs", split_file=split)], capsys)
        assert code == 2 and f"split.txt:2: {shown} is outside data.root" in message
        assert "data.image_folder.allow_outside_root=true" in message
    assert not list((tmp_path / "runs").rglob("*"))  # no run folder was claimed
    code = main(["data", *_folder_data(root, split_file=split, allow_outside_root="true")])
    assert code == 0  # the user opted in


def test_a_class_folder_linking_to_its_parent_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    _pngs(root / "a", 2)
    _pngs(root / "b", 2, 100)
    os.symlink("..", root / "b" / "everything")
    code, message = _run(["data", *_folder_data(root)], capsys)
    assert code == 2 and "everything" in message and "every class's images" in message


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG file that declares ``width x height`` pixels and holds almost nothing (a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(tmp_path, capsys):
    root = tmp_path / "data"
    _pngs(root / "a", 2)
    _pngs(root / "b", 1)
    _png_header_only(root / "b" / "huge.png", 13000, 13000)  # 2.5 GB decoded
    start = time.perf_counter()
    printed: list[str] = []
    code, message = _run(["train", *_folder_config(root, tmp_path / "runs"), "--verify"], capsys, printed)
    assert code == 2 and "1 of 4 image files cannot be read" in message  # --verify lists them, then one line
    assert "huge.png declares 13000x13000 pixels" in printed[0]
    code, message = _run(["train", *_folder_config(root, tmp_path / "runs")], capsys)
    assert code == 2 and "huge.png declares 13000x13000 pixels" in message and "max_image_pixels" in message
    assert time.perf_counter() - start < 60


def test_a_file_named_png_that_is_postscript_is_never_handed_to_a_decoder(tmp_path, capsys):
    root = tmp_path / "data"
    _pngs(root / "a", 2)
    _pngs(root / "b", 1)
    (root / "b" / "x.png").write_text("%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    printed: list[str] = []
    code, message = _run(["data", *_folder_data(root), "--verify"], capsys, printed)
    assert code == 2 and "1 of 4 image files cannot be read" in message
    assert "x.png: cannot identify image file" in printed[0]  # not a format the loader reads, whatever PIL has


# --------------------------------------------------------------------------- config files

def test_a_yaml_alias_bomb_and_a_huge_yaml_are_refused_at_once(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for name, previous in zip("bcdefghi", "abcdefgh"):
        levels.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
    bomb.write_text("name:\n" + "\n".join("  " + line for line in levels) + "\n")
    start = time.perf_counter()
    code, message = _run(["train", bomb, "--dry-run"], capsys)
    assert code == 2 and "bomb.yaml" in message and "aliases" in message
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\n" + "# padding\n" * 600_000)
    code, message = _run(["train", huge, "--dry-run"], capsys)
    assert code == 2 and "huge.yaml" in message and "more than a config file may hold" in message
    study = tmp_path / "study.yaml"
    study.write_text("preset: fashion_mnist_lt\nvariants:\n  a: &v\n    - method.names=[plain]\n  b: *v\n")
    code, message = _run(["compare", study], capsys)
    assert code == 2 and "aliases" in message
    assert time.perf_counter() - start < 30


# --------------------------------------------------------------------------- checkpoints

def _inflated(source: Path, target: Path, declared: int) -> None:
    """``source`` (a zip archive) with its first entry claiming ``declared`` bytes in the central
    directory, as a crafted archive whose entries decompress to far more than the file holds."""
    data = bytearray(source.read_bytes())
    directory = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, directory + 24, declared)
    target.write_bytes(bytes(data))


def test_an_archive_declaring_far_more_than_it_holds_is_refused_unread(run, tmp_path, capsys):
    checkpoint = next((run / "checkpoints").glob("*.pt"))
    bomb = tmp_path / "bomb.pt"
    _inflated(checkpoint, bomb, 1 << 30)
    assert zipfile.is_zipfile(bomb)
    code, message = _run(["sample", bomb, "--out", tmp_path / "s"], capsys)
    assert code == 2 and "bomb.pt declares" in message and "refused unread" in message
    code, message = _run(["evaluate", run, "--features", "classifier", "--feature-path", bomb], capsys)
    assert code == 2 and "bomb.pt declares" in message


def _altered(run: Path, tmp_path: Path, name: str, change) -> Path:
    state = torch.load(next((run / "checkpoints").glob("*.pt")), weights_only=True)
    change(state)
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    return path


BROKEN_CHECKPOINTS = {
    "nan weights": (lambda s: s["ema"]["conv_in.weight"].fill_(float("nan")), "ema.conv_in.weight holds NaN"),
    "wrong shape": (lambda s: s["ema"].__setitem__("conv_in.weight", torch.zeros(3, 3)),
                    "ema.conv_in.weight has shape (3, 3), the model needs"),
    "integer weights": (lambda s: s["ema"].__setitem__("conv_in.weight", s["ema"]["conv_in.weight"].long()),
                        "ema.conv_in.weight is torch.int64"),
    "class count": (lambda s: s.__setitem__("class_counts", s["class_counts"] + [1]), "ema.class_emb.weight has shape"),
    "fractional step": (lambda s: s.__setitem__("step", 2.5), "'step' must be a non-negative integer, got 2.5"),
    "missing entry": (lambda s: s["ema"].pop("conv_in.bias"), "ema lacks 'conv_in.bias'"),
    "bad data shape": (lambda s: s.__setitem__("data_shape", [1, 8]), "'data_shape' must be 3 non-negative integers"),
}


@pytest.mark.parametrize("case", list(BROKEN_CHECKPOINTS))
def test_a_broken_checkpoint_is_one_line_naming_the_file_and_the_key(run, tmp_path, capsys, case):
    change, expected = BROKEN_CHECKPOINTS[case]
    path = _altered(run, tmp_path, case.replace(" ", "_"), change)
    code, message = _run(["sample", path, "--out", tmp_path / "s", "--per-class", "1", "--sampler-steps", "2"], capsys)
    assert code == 2 and path.name in message and expected in message, message
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("option, value, expected", [
    ("--guidance", "nan", "sample.guidance=nan must be a finite number"),
    ("--guidance", "1e300", "sample.guidance=1e+300 must be in [-1, 100]"),
    ("--eta", "nan", "sample.ddim.eta=nan must be a finite number"),  # the old flag of sample.ddim.eta
    ("sample.ddim.eta=-5", None, "sample.ddim.eta=-5.0 must be in [0, 1]"),
])
def test_sampling_options_out_of_range_are_refused(run, tmp_path, capsys, option, value, expected):
    code, message = _run(["sample", run, option, *([value] if value is not None else []), "--out", tmp_path / "s"],
                         capsys)
    assert code == 2 and expected in message
    assert not (tmp_path / "s").exists()


def test_settings_that_overflow_the_sampler_write_nothing(run, tmp_path, capsys, monkeypatch):
    import ccua.generate

    monkeypatch.setattr(ccua.generate, "guided_prediction", lambda *args, **kwargs: torch.tensor(float("nan")))
    code, message = _run(["sample", run, "--out", tmp_path / "s", "--per-class", "1", "--sampler-steps", "2"], capsys)
    assert code == 2 and "came out NaN or infinite" in message and "0000002.pt" in message
    assert not (tmp_path / "s" / "images.npz").exists()


def test_a_model_that_cannot_fit_is_refused_with_the_estimate_before_it_is_built(tmp_path, capsys):
    start = time.perf_counter()
    code, message = _run(["train", "fashion_mnist_lt", "model.unet.ch=100000", f"train.out_dir={tmp_path}"], capsys)
    assert code == 2 and "M parameters" in message and "GiB" in message and "free on cpu" in message
    assert time.perf_counter() - start < 60 and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- a full disk

def _full_disk_after(count: int):
    """A PIL save that fails like a full disk from its ``count``-th file on."""
    original, calls = Image.Image.save, {"n": 0}

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > count:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, fp, *args, **kwargs)
    return save


def test_a_full_disk_while_writing_pngs_leaves_no_partial_sample_set(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image.Image, "save", _full_disk_after(5))
    before = _snapshot(run)
    code, message = _run(["sample", run, "--out", tmp_path / "s", "--per-class", "3", "--sampler-steps", "2"], capsys)
    assert code == 2 and "No space left on device" in message and "partial sample set was removed" in message
    assert not list((tmp_path / "s").rglob("*.png")) and not (tmp_path / "s" / "images.npz").exists()
    assert _snapshot(run) == before


def test_a_full_disk_while_writing_the_report_is_one_line(run, tmp_path, capsys, monkeypatch):
    import ccua.report.tables

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ccua.report.tables.csv, "DictWriter", full)
    evaluated = tmp_path / "e"
    assert main(["evaluate", str(run), "--features", "random", "--per-class", "2", "--sampler-steps", "2",
                 "--max-reference", "40", "--out", str(evaluated)]) == 0
    capsys.readouterr()
    code, message = _run(["report", evaluated, "--out", tmp_path / "report"], capsys)
    assert code == 2 and "comparison.csv" in message and "No space left on device" in message
    assert not list((tmp_path / "report").glob("*.tmp")) and not (tmp_path / "report" / "comparison.csv").exists()
