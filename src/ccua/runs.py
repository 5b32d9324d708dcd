"""Run folders: claiming a new one, finding a run's checkpoints (to sample or evaluate it, or to
resume it), which settings a resume may change, and what a resume records.

A run folder is ``out_dir/NNN-<name>`` with ``<name>`` the run name made safe for a file name
(``ccua compare`` names its folders itself). ``config.yaml`` holds the settings the run was
started with and is never rewritten; every resume appends one line to ``resumes.jsonl`` (step,
time, checkpoint, changed settings old -> new). :class:`RunFolder` answers the questions asked
of a folder: which checkpoints it holds, whether it holds exactly a given training, and whether
another process is training in it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ccua.config import Config, ConfigError, config_from_dict, read_yaml_file, resumable_keys
from ccua.checkpoint import CHECKPOINT_PATTERN, list_checkpoints
from ccua.files import folder_lock

log = logging.getLogger(__name__)

RESUME_RECORD = "resumes.jsonl"
LOSS_LOG = "losses.jsonl"
#: the columns of a loss-log row that are not loss terms
LOSS_LOG_BOOKKEEPING = frozenset({"step", "lr", "steps_per_sec", "images_per_sec"})
CHECKPOINT_FOLDER = "checkpoints"  # a run's checkpoints: run_dir/checkpoints/0001000.pt

#: settings a resumed run may change (dotted keys or whole sections); :func:`resume_changes` says why
RESUMABLE = (
    "name", "train.steps", "train.out_dir", "train.log_every", "train.ckpt_every", "train.keep_checkpoints",
    "train.sample_every", "train.progress", "train.report_to", "train.wandb_project", "train.dist_timeout_minutes",
    "train.proxy_every",
    "train.proxy_samples", "train.proxy_features", "train.proxy_feature_path", "train.proxy_sampler_steps", "sample",
    "data.root", "data.download", "data.num_workers", "data.vae",
)

_NUMBERED = re.compile(r"^(\d{3,})-(.+)$")


@dataclass(frozen=True)
class RunFolder:
    """One run folder: its stored settings, its checkpoints, and whether it holds a given training.

    A folder holds a training when its config.yaml differs from that training's config only in
    settings a resume may change (:data:`RESUMABLE`): then it can be continued to a larger budget,
    and its checkpoint at step N is what that training gives at step N.
    """

    path: Path

    @classmethod
    def claim(cls, out_dir: str | Path, name: str) -> "RunFolder":
        """A new numbered folder ``out_dir/NNN-<name>`` (:func:`claim_run_dir`)."""
        return cls(claim_run_dir(out_dir, name))

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    def checkpoints(self) -> list[Path]:
        """Its checkpoints, oldest first."""
        return run_checkpoints(self.path)

    def checkpoint_steps(self) -> list[int]:
        return [int(CHECKPOINT_PATTERN.match(p.name).group(1)) for p in self.checkpoints()]

    def trained_step(self) -> int:
        """The step of its newest checkpoint (0 without one)."""
        steps = self.checkpoint_steps()
        return steps[-1] if steps else 0

    def is_finished(self, steps: int) -> bool:
        """Trained to at least ``steps``."""
        return bool(self.checkpoints()) and self.trained_step() >= steps

    def seconds_per_step(self, last: int = 100) -> float | None:
        """The median training time per step over the newest ``last`` rows of its loss log (None
        before a row is logged): a median, so the slow first interval after a start or resume
        and an odd pause do not count."""
        rates = [row.get("steps_per_sec") for row in read_loss_log(self.path / LOSS_LOG)]
        times = [1.0 / rate for rate in rates if isinstance(rate, (int, float)) and rate > 0]
        return statistics.median(times[-last:]) if times else None

    def checkpoint_at(self, step: int) -> Path:
        """The checkpoint of exactly ``step``; a ConfigError naming the steps kept when it is missing."""
        for path, found in zip(self.checkpoints(), self.checkpoint_steps()):
            if found == step:
                return path
        kept = ", ".join(map(str, self.checkpoint_steps())) or "none"
        raise ConfigError(f"run {self.path} has no checkpoint of step {step} (kept: {kept}); evaluate a kept step, "
                          "or train the run again with train.keep_checkpoints=0 and a train.ckpt_every that "
                          "divides it")

    def stored_config(self) -> Config | None:
        """The settings the run was started with (None before it wrote them)."""
        if not self.config_file.is_file():
            return None
        try:
            return config_from_dict(read_yaml_file(self.config_file, "run config") or {}, stored=True)
        except ConfigError as error:
            raise ConfigError(f"{self.config_file} cannot be read ({' '.join(str(error).split())}): "
                              "repair it or move the run folder away") from None

    def training_differences(self, config: Config) -> dict[str, list]:
        """Settings of ``config`` that would train something else than this folder holds, each as
        [the folder's value, ``config``'s value]; empty when the folder holds this training (or
        nothing yet)."""
        stored = self.stored_config()
        return {} if stored is None else resume_changes(stored, config)[1]

    def check_holds(self, config: Config, label: str) -> None:
        """A ConfigError naming the differing settings when the folder holds another training."""
        differing = self.training_differences(config)
        if differing:
            shown = "; ".join(f"{k}: run {old!r}, now {new!r}" for k, (old, new) in list(differing.items())[:4])
            more = f" (+{len(differing) - 4} more)" if len(differing) > 4 else ""
            raise ConfigError(f"{label}: {self.path} was trained with other settings ({shown}{more}); its "
                              "results would be reported under the new ones. Give the changed setting a new "
                              "variant name, or use another output folder")

    def lock(self, holder: str):
        """Hold the folder while training in it (:func:`ccua.files.folder_lock`)."""
        return folder_lock(self.path, holder)


def safe_name(name: str) -> str:
    """The run name as it appears in folder names (anything but letters, digits, _ . - becomes -)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def run_dirs(out_dir: str | Path, name: str) -> list[Path]:
    """Run folders ``NNN-<safe name>`` of exactly this run name, newest number first."""
    out, wanted = Path(out_dir), safe_name(name)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir()
             if p.is_dir() and (m := _NUMBERED.match(p.name)) and m.group(2) == wanted]
    return [p for _, p in sorted(found, reverse=True)]


def claim_run_dir(out_dir: str | Path, name: str) -> Path:
    """Create ``out_dir/NNN-<name>`` with NNN one more than the highest number there.

    The folder is created without ``exist_ok``: when another launch takes the same number first,
    the next number is tried, so two launches never share a folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    while True:
        numbers = [int(m.group(1)) for p in out.iterdir() if (m := _NUMBERED.match(p.name))]
        run_dir = out / f"{max(numbers, default=-1) + 1:03d}-{safe_name(name)}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write a probe file, so a read-only or full place fails
    now, with its name, rather than at the first checkpoint."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as stream:
            stream.write(b"ccua")
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        reason = error.strerror or str(error)
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way of the folder"
        raise ConfigError(f"cannot write into {folder}: {reason} (set train.out_dir to a writable folder)") from None


def checkpoint_folder(run_dir: str | Path) -> Path:
    """Where a run folder keeps its checkpoints."""
    return Path(run_dir) / CHECKPOINT_FOLDER


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a run folder, oldest first."""
    return list_checkpoints(checkpoint_folder(run_dir))


def resume_candidates(resume: str, out_dir: str | Path, name: str) -> tuple[list[Path], bool]:
    """Checkpoints to try for ``--resume``, newest first, and whether older ones may stand in.

    ``latest``: the newest run folder named exactly ``NNN-<name>`` that has a checkpoint; a run
    folder: its checkpoints. In both, an unreadable newest checkpoint gives way to the previous
    one (with a warning). A checkpoint file is used as given.
    """
    if resume == "latest":
        for run in run_dirs(out_dir, name):
            found = run_checkpoints(run)
            if found:
                return found[::-1], True
        raise FileNotFoundError(f"--resume latest: no checkpoint of a run named {name!r} "
                                f"(folders {Path(out_dir)}/NNN-{safe_name(name)})")
    path = Path(resume)
    if path.is_dir():
        found = run_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"--resume {resume}: the run folder has no checkpoint")
        return found[::-1], True
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such run folder or checkpoint")
    return [path], False


def auto_resume(out_dir: str | Path, name: str, run_dir: str | Path | None = None) -> tuple[str | None, Path | None]:
    """What ``--resume auto`` does: (what to resume or None, the run folder to train in or None).

    The run is ``run_dir`` when given, else the newest folder ``out_dir/NNN-<name>``. With a
    checkpoint it is resumed (``latest``'s fallback to a readable older checkpoint included);
    without one (a launch killed before its first checkpoint) training starts afresh in that
    same folder rather than claiming a new number; with no folder at all a new one is claimed.
    So one command line serves the first launch and every requeue.
    """
    folder = Path(run_dir) if run_dir is not None else next(iter(run_dirs(out_dir, name)), None)
    if folder is None:
        return None, None
    return (str(folder) if run_checkpoints(folder) else None), folder


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint file as given, or the newest checkpoint of a run folder (in its ``checkpoints/``,
    or directly in the folder given)."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    if path.is_dir():
        found = run_checkpoints(path) or list_checkpoints(path)
        if found:
            return found[-1]
        raise FileNotFoundError(f"no checkpoint in run folder {path}")
    raise FileNotFoundError(f"{path} is neither a run folder nor a checkpoint file")


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (the parent of its ``checkpoints/`` folder)."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINT_FOLDER else parent


def _flatten(values: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _resumable(key: str, resumable: tuple[str, ...]) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in resumable)


def resume_changes(saved: Config, current: Config) -> tuple[dict[str, list], dict[str, list]]:
    """(allowed, refused): dotted keys whose value differs between a checkpoint's config and
    ``current``, each as [checkpoint value, new value].

    Allowed (:data:`RESUMABLE`) are the settings that do not change what the optimiser computes,
    so a resumed run still ends with exactly the weights of an uninterrupted one:

    - ``name``, ``train.out_dir``: labels and places (a run folder may be moved);
    - ``train.steps``: where the run ends (``ccua compare`` resumes unfinished runs this way, also
      with a larger budget);
    - ``train.log_every``, ``ckpt_every``, ``keep_checkpoints``, ``sample_every``, ``progress``: how
      often the run reports and saves; ``train.dist_timeout_minutes``: how long processes wait
      for each other;
    - ``train.proxy_*`` and ``sample.*``: in-training sampling, which runs on a saved-and-restored
      random state, so neither its settings nor how often it runs move the training's generators;
    - ``data.root``, ``data.download``, ``data.num_workers``: where and how the same images are read
      (the per-class counts are checked against the checkpoint's); ``data.vae``: the decoder of
      sample grids; and the plug-in settings declared ``resumable`` (:func:`ccua.config.setting`),
      such as an image folder's test split and the limits on its files.

    Everything else is refused: the model, the objective, the methods, which images are trained on
    (``data.name``, ``imbalance``, ``n_max``, ``longtail_seed``, ``resolution``, ``channels``,
    a source's training split file, ``hflip``, ``balanced_resampling``) and the optimisation (``lr``,
    batch size, optimiser, seed, warm-up, clipping, EMA, bf16). The checkpoint's optimiser state, random states
    and data order continue the old settings: a change there would silently train something that
    is neither run, while config.yaml claimed the new values.
    """
    old = _flatten(saved.to_dict())  # read as today's config: settings added since have their defaults
    new = _flatten(current.to_dict())
    differing = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    resumable = (*RESUMABLE, *resumable_keys())  # the plug-ins' are asked once, not per key
    allowed, refused = {}, {}
    for key, values in differing.items():
        (allowed if _resumable(key, resumable) else refused)[key] = values
    return allowed, refused


def refuse_changes(path: Path, refused: dict[str, list]) -> None:
    """ConfigError listing the settings that differ from the checkpoint's and break exactness."""
    if not refused:
        return
    shown = [f"{k}: checkpoint {old!r} vs config {new!r}" for k, (old, new) in list(refused.items())[:6]]
    more = f" (+{len(refused) - 6} more)" if len(refused) > 6 else ""
    raise ConfigError(f"checkpoint {path} was trained with another config: {'; '.join(shown)}{more}. "
                      "These settings change the training itself; resume with the run's settings or start "
                      "a new run (only output, sampling and data-location settings may change on resume)")


def record_resume(run_dir: Path, step: int, checkpoint: Path, changed: dict[str, list],
                  skipped: list[str] | None = None) -> None:
    """Append the resume to ``resumes.jsonl``: when, from which checkpoint, what changed."""
    record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(checkpoint),
              "changed": changed}
    if skipped:
        record["skipped_unreadable"] = skipped
    with open(run_dir / RESUME_RECORD, "a") as stream:
        stream.write(json.dumps(record) + "\n")


def read_loss_log(path: str | Path) -> list[dict]:
    """The rows of a run's ``losses.jsonl`` in step order, one per step (after a resume the later
    row of a step wins); none when the file is missing. A row cut short by a kill is skipped, so
    the log of a run still training reads as well."""
    path = Path(path)
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
            by_step[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    return [by_step[step] for step in sorted(by_step)]


def truncate_loss_log(path: Path, step: int) -> int:
    """Drop the rows of ``losses.jsonl`` logged after ``step`` (a killed run wrote them after its
    last checkpoint; the resumed run logs those steps again). Returns how many were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += 1  # a row cut short by the kill
            continue
        if row_step <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        log.info("%s: dropped %d row(s) logged after step %d", path, dropped, step)
    return dropped
