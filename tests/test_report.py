"""Cross-run reports: comparison tables, the per-class plot, tail grids."""

from __future__ import annotations

import csv
import os
import time

import numpy as np
import pytest
from PIL import Image

from ccua.metrics import RandomFeatureNet, Reference, evaluate
from ccua.report import find_metrics_file, make_report, tail_grid, write_metrics
from ccua.report.tables import group_key


@pytest.fixture(scope="module")
def evaluated_runs(tmp_path_factory):
    """Three run folders with eval/metrics.json: method A with seeds 0 and 1, method B."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    ref_labels = np.repeat(np.arange(6), 10)
    ref = Reference(rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8), ref_labels, key="toy")
    net = RandomFeatureNet(progress=False)
    counts = [200, 120, 60, 30, 12, 5]
    folders = []
    for name, seed, brightness in (("A-seed0", 0, 0), ("A-seed1", 1, 0), ("B", 0, 60)):
        gen_rng = np.random.default_rng(seed + 10)
        images = np.clip(gen_rng.integers(0, 256, (36, 8, 8, 1)) + brightness, 0, 255).astype(np.uint8)
        labels = np.repeat(np.arange(6), 6)
        result = evaluate(images, labels, ref, counts, net, kid_subsets=3)
        folder = root / name
        write_metrics(result, folder / "eval", {"seed": seed, "guidance": 1.0, "step": 100})
        folders.append(folder)
    return folders


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_make_report_writes_table_csv_summary_and_plot(evaluated_runs, tmp_path):
    names = ["A", "A", "B"]
    paths = make_report(evaluated_runs, tmp_path / "report", names=names)
    for key in ("markdown", "csv", "summary_csv", "plot"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    rows = _read_csv(paths["csv"])
    assert [r["name"] for r in rows] == names
    assert {"fid", "kid", "precision", "recall", "fid_head", "fid_tail", "n_gen_tail", "seed"} <= set(rows[0])
    assert rows[0]["n_gen_head"] == "12" and rows[0]["n_ref_head"] == "20"
    summary = _read_csv(paths["summary_csv"])
    assert [(r["name"], r["n_runs"]) for r in summary] == [("A", "2"), ("B", "1")]
    fids = [float(r["fid"]) for r in rows[:2]]
    assert float(summary[0]["fid_mean"]) == pytest.approx(np.mean(fids))
    assert float(summary[0]["fid_std"]) == pytest.approx(np.std(fids, ddof=1))
    assert summary[1]["fid_std"] == ""
    text = paths["markdown"].read_text()
    assert "Mean ± std" in text and "per_class.png" in text
    with Image.open(paths["plot"]) as image:
        assert image.format == "PNG" and image.width > 300


def test_make_report_accepts_files_and_names_runs_by_folder(evaluated_runs, tmp_path):
    files = [run / "eval" / "metrics.json" for run in evaluated_runs]
    paths = make_report(files, tmp_path / "r", seeds_grouping="strip_seed")
    rows = _read_csv(paths["csv"])
    assert [r["name"] for r in rows] == ["A-seed0", "A-seed1", "B"]
    assert [r["name"] for r in _read_csv(paths["summary_csv"])] == ["A", "B"]
    single = make_report(files[:1], tmp_path / "single")
    assert "summary_csv" not in single and len(_read_csv(single["csv"])) == 1


def test_folder_search_takes_the_newest_metrics_file(tmp_path):
    old, new = tmp_path / "eval_old" / "metrics.json", tmp_path / "eval_new" / "metrics.json"
    for path in (old, new):
        path.parent.mkdir()
        path.write_text("{}")
    past = time.time() - 100
    os.utime(old, (past, past))
    assert find_metrics_file(tmp_path) == new
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        find_metrics_file(empty)


def test_seed_grouping_rules():
    assert group_key("ccua-seed3", "strip_seed") == "ccua"
    assert group_key("ccua_s12", "strip_seed") == "ccua"
    assert group_key("ccua-seed3", "name") == "ccua-seed3"
    assert group_key("x", "none") is None
    assert group_key("x-1", lambda n: n.split("-")[0]) == "x"
    with pytest.raises(ValueError):
        group_key("x", "bogus")


def test_tail_grid_rows_are_runs_and_columns_are_seeds(tmp_path):
    rng = np.random.default_rng(0)
    runs = {"ddpm": rng.integers(0, 256, (5, 16, 16, 1), dtype=np.uint8),
            "ccua": rng.integers(0, 256, (5, 3, 16, 16), dtype=np.uint8),  # NCHW is accepted too
            "cbdm": rng.integers(0, 256, (4, 16, 16), dtype=np.uint8)}
    path = tail_grid(runs, tmp_path / "grids" / "tail.png", scale=4, pad=2)
    with Image.open(path) as image:
        assert image.mode == "RGB"
        assert image.height == 2 + 3 * (64 + 2)  # three rows of 16 x 4 pixels
        assert image.width > 5 * (64 + 2)
        # the first image of the first row sits at the right place, upscaled by nearest neighbour
        label_width = image.width - 5 * (64 + 2) - 2
        pixel = image.getpixel((label_width + 1, 2 + 1))
        assert pixel == (int(runs["ddpm"][0, 0, 0, 0]),) * 3
    with pytest.raises(ValueError, match="same image size"):
        tail_grid({"a": runs["ddpm"], "b": rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)}, tmp_path / "x.png")


def test_one_grid_writer_for_training_grids_and_labelled_grids(tmp_path):
    """save_grid without labels keeps grey images grey and lays cells out at scale with the pad
    given (the trainer passes pad = 2 * scale: the old whole-image upscaling, pixel for pixel)."""
    from ccua.images import save_grid

    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8), rng.integers(0, 256, (2, 4, 4, 1), dtype=np.uint8)]
    path = save_grid(rows, tmp_path / "grid.png", scale=2, pad=4)
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (4 + 3 * (8 + 4), 4 + 2 * (8 + 4))
        pixels = np.asarray(image)
    # native grid with pad 2, upscaled x2 by nearest neighbour
    native = np.full((2 + 2 * 6, 2 + 3 * 6), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            native[2 + i * 6: 6 + i * 6, 2 + j * 6: 6 + j * 6] = tile[..., 0]
    np.testing.assert_array_equal(pixels, native.repeat(2, axis=0).repeat(2, axis=1))
    labelled = save_grid(rows, tmp_path / "labelled.png", row_labels=["a", "b"])
    with Image.open(labelled) as image:
        assert image.mode == "RGB" and image.width > 2 + 3 * 6


def test_the_report_command_adds_paired_differences_to_a_baseline(evaluated_runs, tmp_path, capsys):
    from ccua.cli import main

    out = tmp_path / "with_baseline"
    assert main(["report", *map(str, evaluated_runs), "--names", "A,A,B", "--out", str(out), "--baseline", "B"]) == 0
    rows = {r["metric"]: r for r in _read_csv(out / "differences.csv") if r["name"] == "A"}
    by_run = {r["seed"]: float(r["fid"]) for r in _read_csv(out / "comparison.csv") if r["name"] == "A"}
    b_fid = float(next(r["fid"] for r in _read_csv(out / "comparison.csv") if r["name"] == "B"))
    # B has seed 0 only: one pair (A's seed 0), so a difference without an interval
    assert rows["fid"]["n_seeds"] == "1" and rows["fid"]["low"] == ""
    assert float(rows["fid"]["mean"]) == pytest.approx(by_run["0"] - b_fid)
    assert "Difference to B" in (out / "comparison.md").read_text()


def test_a_report_rewritten_with_fewer_methods_keeps_no_file_of_the_earlier_one(evaluated_runs, tmp_path):
    out = tmp_path / "report"
    first = make_report(evaluated_runs, out, names=["A", "A", "B"], baseline="B")
    assert first["differences_csv"].exists() and first["summary_csv"].exists()
    # B alone: one run, so neither a summary nor a difference to itself; the old ones must go
    second = make_report(evaluated_runs[2:], out, names=["B"], baseline="B")
    assert "differences_csv" not in second and "summary_csv" not in second
    assert not (out / "differences.csv").exists() and not (out / "summary.csv").exists()
    assert [r["name"] for r in _read_csv(out / "comparison.csv")] == ["B"]
    assert "Difference to" not in (out / "comparison.md").read_text()


def test_per_class_plot_draws_each_method_once_as_the_mean_of_its_seeds(tmp_path):
    from matplotlib.figure import Figure

    from ccua.report.plots import _draw_group, plot_per_class
    from ccua.report.tables import Run

    def run(name: str, fids: list[float]) -> Run:
        rows = [{"class": c, "train_count": count, "fid": fid} for c, (count, fid) in enumerate(zip([600, 60], fids))]
        return Run(name, tmp_path / name, {"per_class": rows})

    seeds = [run("ccua", [2.0, 10.0]), run("ccua", [4.0, 30.0])]
    axes = Figure().add_subplot()
    assert _draw_group(axes, seeds, "fid", "ccua", 0) is True
    (line,) = axes.get_lines()
    assert list(line.get_xdata()) == [60.0, 600.0] and list(line.get_ydata()) == [20.0, 3.0]
    assert axes.get_legend_handles_labels()[1] == ["ccua (mean of 2, band min-max)"]
    assert plot_per_class(seeds + [run("plain", [3.0, 12.0])], tmp_path / "p.png", ("fid",)).stat().st_size > 0
