"""Compact tables of a comparison's key numbers, read from the files ``ccua compare`` wrote.

For each report folder of the comparison (fixed / tuned guidance, each reference split): mean ±
sample std over seeds per variant, and each variant's paired difference to the baseline with its
95% t interval (``summary.csv`` and ``differences.csv``), for the metrics that answer "does it
help the tail": overall FID / KID / recall / class accuracy, and per group FID / recall / class
accuracy / near-copy share. ``--columns copies`` shows the memorisation view instead: per group the
near-copy share within the class and against the whole training set, the distinct training images
the samples land nearest to and the median nearest / second-nearest ratio. Further reports beside it
(``<out>/report_*``, made with ``ccua report`` from the same runs) are printed too. Examples:
    python bench/study_tables.py runs/study_fashion_mnist_lt
    python bench/study_tables.py runs/fashion_mnist_lt_memorising --columns copies
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

KEY_COLUMNS = [("fid", "FID"), ("kid", "KID x1e3"), ("recall", "recall"), ("class_accuracy", "class acc"),
               ("fid_head", "FID head"), ("fid_tail", "FID tail"), ("recall_tail", "recall tail"),
               ("class_accuracy_tail", "class acc tail"), ("copies_tail", "copies tail"),
               ("nn_ratio_tail", "NN ratio tail")]
# the head's copies only: its distinct-nearest count says little with hundreds of images per class
COPY_COLUMNS = [("copies_head", "copies head")] + [
    (f"{metric}_{group}", f"{label} {group}") for group in ("body", "tail")
    for metric, label in (("copies", "copies"), ("copies_any", "copies (whole set)"),
                          ("distinct_nn", "distinct nearest"), ("nn_ratio", "NN ratio"))]
COLUMN_SETS = {"key": KEY_COLUMNS, "copies": COPY_COLUMNS}
SCALE = {"kid": 1e3}
DIGITS = {"fid": 2, "fid_head": 2, "fid_tail": 2, "kid": 1,  # the rest (shares, accuracies): 3
          "distinct_nn_body": 1, "distinct_nn_tail": 1}
Columns = list[tuple[str, str]]


def _number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def _cell(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return f"{value * SCALE.get(column, 1.0):.{DIGITS.get(column, 3)}f}"


def _header(columns: Columns) -> list[str]:
    return ["| variant | seeds | " + " | ".join(label for _, label in columns) + " |",
            "|---|---:|" + "---:|" * len(columns)]


def summary_table(folder: Path, columns: Columns = KEY_COLUMNS) -> str:
    """Mean ± std per variant (one row each) from summary.csv."""
    rows = list(csv.DictReader((folder / "summary.csv").open()))
    lines = _header(columns)
    for row in rows:
        cells = []
        for column, _ in columns:
            mean, std = _number(row.get(f"{column}_mean", "")), _number(row.get(f"{column}_std", ""))
            cells.append(_cell(mean, column) + ("" if std is None else f" ± {_cell(std, column)}"))
        lines.append(f"| {row['name']} | {row['n_runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(folder: Path, columns: Columns = KEY_COLUMNS) -> str:
    """Paired difference to the baseline [95% interval] per variant; bold where the interval excludes 0."""
    path = folder / "differences.csv"
    if not path.exists():
        return "(no paired differences: one variant or one seed only)"
    found: dict[str, dict[str, dict[str, str]]] = {}
    for row in csv.DictReader(path.open()):
        found.setdefault(row["name"], {})[row["metric"]] = row
    lines = _header(columns)
    for name, metrics in found.items():
        cells, seeds = [], "-"
        for column, _ in columns:
            row = metrics.get(column)
            if row is None:
                cells.append("-")
                continue
            seeds = row["n_seeds"]
            mean, low, high = (_number(row[k]) for k in ("mean", "low", "high"))
            text = ("+" if mean >= 0 else "") + _cell(mean, column)
            if low is not None:
                text += f" [{_cell(low, column)}, {_cell(high, column)}]"
            cells.append(f"**{text}**" if row["detectable"] == "True" else text)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the comparison's output folder (holding report/ and guidance.json)")
    parser.add_argument("--columns", choices=sorted(COLUMN_SETS), default="key",
                        help="key: FID, recall, class accuracy and tail copies; copies: the memorisation view")
    args = parser.parse_args()
    columns = COLUMN_SETS[args.columns]
    out = Path(args.out)
    # the comparison's reports, then any further ones made from its runs (``ccua report --out
    # <out>/report_<what>``, e.g. paired to another baseline than plain)
    folders = ([out / "report"] + sorted(p for p in (out / "report").iterdir() if p.is_dir())
               + sorted(out.glob("report_*")))
    for folder in folders:
        if not (folder / "summary.csv").exists():
            continue
        print(f"### {folder.relative_to(out)}\n")
        print(summary_table(folder, columns) + "\n")
        print(differences_table(folder, columns) + "\n")
    guidance = out / "guidance.json"
    if guidance.exists():
        print("### guidance\n\n| variant | fixed w | tuned w (overall) | tuned w (tail) | proxy FID per w | "
              "tail proxy FID per w |\n|---|---:|---:|---:|---|---|")
        for name, record in json.loads(guidance.read_text()).items():
            proxy, tail = (", ".join(f"{w}: {fid:.2f}" for w, fid in (record.get(key) or {}).items() if fid is not None)
                           for key in ("proxy_fid", "proxy_fid_tail"))
            print(f"| {name} | {record.get('fixed')} | {record.get('tuned', '-')} | {record.get('tuned_tail', '-')} | "
                  f"{proxy} | {tail} |")


if __name__ == "__main__":
    main()
