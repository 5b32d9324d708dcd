"""The record of one evaluation, from the sample request to the numbers.

An evaluation is fixed by two things: which images were scored (a checkpoint sampled with given
settings, or a sample file) and how they were scored (feature network and weights, reference
data, split and size, metric settings). :class:`EvaluationRecord` holds both. It names the
evaluation's folder (a readable part and a short hash of the whole record), it is stored in
``metrics.json``, and a stored metrics file is reused only when its record equals the request:
a changed sampler step count, reference cap, feature network or seed is a new evaluation, never
an old number under a new label.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ccua.config import SampleConfig, sampler_settings

#: raised when what a record holds, or how metrics are computed from it, changes meaning
RECORD_FORMAT = 1
#: SampleConfig settings that do not change the images of an evaluation's sample set
_NOT_IN_SAMPLES = ("grid_per_class", "use_ema")


@dataclass(frozen=True)
class SampleRequest:
    """Samples drawn from a checkpoint: ``per_class`` of each of ``num_classes`` classes."""

    run: str  # the run's name
    checkpoint: str  # the file's name inside its run folder ("checkpoints/0001000.pt")
    checkpoint_bytes: int
    step: int
    ema: bool
    seed: int
    per_class: int
    num_classes: int
    sample: dict[str, Any]  # the sampler's settings (sampler, steps, eta, guidance, clipping, ...)

    @classmethod
    def of(cls, run: str, checkpoint: Path, run_dir: Path, step: int, ema: bool, seed: int, per_class: int,
           num_classes: int, sample: SampleConfig) -> "SampleRequest":
        try:
            name = str(checkpoint.resolve().relative_to(run_dir.resolve()))
        except ValueError:
            name = checkpoint.name
        settings = {k: v for k, v in sampler_settings(sample).items() if k not in _NOT_IN_SAMPLES}
        return cls(run, name, checkpoint.stat().st_size, int(step), bool(ema), int(seed), int(per_class),
                   int(num_classes), settings)

    def tag(self) -> str:
        """A readable name: step, sampler and its steps, guidance, images per class, seed."""
        return sample_tag(self.step, self.sample, self.per_class, self.seed)


def step_prefix(step: int) -> str:
    """How the names of a checkpoint's sample sets and evaluations begin."""
    return f"step{step:07d}_"


def sample_tag(step: int, sample: dict[str, Any], per_class: int, seed: int) -> str:
    """The readable name of a sample set (its folder under the run's ``samples/`` and ``eval/``)."""
    return (f"{step_prefix(step)}{sample['sampler']}{sample['steps']}_w{sample['guidance']:g}_n{per_class}"
            f"_seed{seed}")


@dataclass(frozen=True)
class SampleFile:
    """A sample file given as it is: its bytes' hash, and the request that made it when known."""

    sha256: str
    request: dict[str, Any] | None = None

    def tag(self) -> str:
        """The request's readable name when the file's request is known, else ``samples``."""
        try:
            return SampleRequest(**self.request).tag()
        except (TypeError, KeyError, ValueError):
            return "samples"


@dataclass(frozen=True)
class Scoring:
    """How the images are scored."""

    features: str
    weights_hash: str
    feature_config: str
    bf16: bool
    reference: str  # the balanced split of ``data``, or "stats:<file>"
    data: dict[str, Any]  # the data set that gives the reference and the training images
    max_reference: int | None
    subset_seed: int
    group_mode: str
    per_class_metrics: bool
    copy_test: dict[str, Any] | None  # the near-copy test's settings; None: not measured
    reference_stats_sha256: str | None = None


@dataclass(frozen=True)
class EvaluationRecord:
    """Which images were scored, and how; equal records give equal numbers."""

    samples: SampleRequest | SampleFile
    scoring: Scoring
    format: int = field(default=RECORD_FORMAT)

    def to_dict(self) -> dict[str, Any]:
        kind = "checkpoint" if isinstance(self.samples, SampleRequest) else "file"
        return {"format": self.format, "samples": {"kind": kind, **asdict(self.samples)},
                "scoring": asdict(self.scoring)}

    def key(self) -> str:
        """A short hash of the whole record."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def folder_name(self) -> str:
        """``<step, sampler, guidance, count, seed>_<reference>-<hash>``: readable, and unique to the record."""
        reference = self.scoring.reference.split(":")[0]
        return f"{self.samples.tag()}_{reference}-{self.key()}"

    def matches(self, stored: dict[str, Any] | None) -> bool:
        """Whether a record read back from a metrics.json is this one (JSON turns tuples into lists)."""
        return stored is not None and _plain(stored) == _plain(self.to_dict())


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def differing_keys(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two record dictionaries (for messages)."""
    if stored is None:
        return ["(no record)"]
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            out.append(prefix)

    walk(_plain(stored), _plain(wanted), "")
    return out


__all__ = ["EvaluationRecord", "RECORD_FORMAT", "SampleFile", "SampleRequest", "Scoring", "differing_keys",
           "sample_tag"]
