"""The loss-curve plot of a run, from its losses.jsonl."""

from __future__ import annotations

from pathlib import Path

from ccua.runs import LOSS_LOG_BOOKKEEPING, read_loss_log


def plot_loss_curves(log_path: str | Path, out_path: str | Path) -> Path | None:
    """One panel per loss term against the step (log-scale y where all values are positive)."""
    records = read_loss_log(log_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in records[0] if k not in LOSS_LOG_BOOKKEEPING]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, key in zip(axes[0], keys):
        values = [r.get(key, float("nan")) for r in records]
        ax.plot(steps, values, lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        if all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
