"""`ccua compare` and `ccua evaluate` end to end on tiny runs (random feature network)."""

import csv
import json

import yaml

from ccua.cli import main
from tests.conftest import tiny_config_dict


def test_compare_two_methods_writes_the_report_and_skips_finished_runs(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "unused")))
    out = tmp_path / "cmp"
    args = ["compare", str(config), "--methods", "plain,ccua", "--seeds", "0", "--steps", "2", "--out", str(out),
            "--features", "random", "--per-class", "3", "--sampler-steps", "2", "--tail-seeds", "2",
            "--max-reference", "200"]
    assert main(args) == 0
    report = out / "report"
    rows = list(csv.DictReader((report / "comparison.csv").open()))
    assert [r["name"] for r in rows] == ["plain", "ccua"]
    assert all(float(r["fid"]) > 0 for r in rows)
    assert (report / "comparison.md").exists() and (report / "per_class.png").exists()
    assert (report / "tail_grid.png").exists()
    metrics = json.loads((out / "runs" / "ccua-s0" / "eval" / "w1_n3" / "metrics.json").read_text())
    assert metrics["provenance"]["step"] == 2 and metrics["provenance"]["guidance"] == 1.0
    assert metrics["provenance"]["feature_net"] == "random"
    # a second call trains nothing: the finished runs are skipped
    stamp = (out / "runs" / "plain-s0" / "checkpoints" / "0000002.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "runs" / "plain-s0" / "checkpoints" / "0000002.pt").stat().st_mtime_ns == stamp


def test_evaluate_a_sample_folder(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 1})))
    main(["train", str(config)])
    run = tmp_path / "runs" / "000-tiny"
    main(["sample", str(run), "--out", str(tmp_path / "s"), "--per-class", "3", "--steps", "2", "--no-png"])
    assert main(["evaluate", str(tmp_path / "s"), "--features", "random", "--max-reference", "100"]) == 0
    printed = capsys.readouterr().out
    assert "head" in printed and "tail" in printed
    metrics = json.loads((tmp_path / "s" / "eval" / "metrics.json").read_text())
    assert metrics["provenance"]["sampler"] == "ddim" and metrics["provenance"]["steps"] == 2
    assert metrics["groups"]["tail"]["n_gen"] == 9
