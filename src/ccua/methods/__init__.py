"""Training methods added to the denoising loss. ``plain`` means none.

``METHODS`` is the registry of ``method.names``; each method's settings are the section of
``MethodConfig`` with the same name, and a method's ``choices`` list the valid values of its
settings that have a fixed set of them.
"""

from __future__ import annotations

from ccua.methods.base import Method, PassOutputs, StepContext
from ccua.methods.cbdm import CBDM, cbdm_loss, class_prior
from ccua.methods.ccua import CCUA, alignment_loss, ucl_loss
from ccua.methods.diffrop import DiffROP, diffrop_loss
from ccua.methods.dispersive import Dispersive, dispersive_loss
from ccua.methods.oclt import OCLT
from ccua.methods.supcon import SupCon, supcon_loss

#: name -> class; its settings are the section of MethodConfig with the same name
METHODS: dict[str, type[Method]] = {
    "ccua": CCUA,
    "cbdm": CBDM,
    "oclt": OCLT,
    "dispersive": Dispersive,
    "supcon": SupCon,
    "diffrop": DiffROP,
}
#: the name that means no method (plain denoising training)
PLAIN = "plain"

# Passes the trainer provides itself; any other pass name is filled by exactly one method.
_SHARED_PASSES = ("cond", "uncond")


def check_combination(names: list[str], objective_name: str) -> None:
    """Raise ValueError, with the reason, for a list of methods that cannot work together.

    Every pair of the registered methods combines (e.g. [ccua, supcon] shares one unconditional
    pass: UCL spreads all samples apart, supcon then also draws same-class samples together).
    What cannot work: unknown or repeated names, ``plain`` next to a method, a method on an
    objective it does not support, and two methods filling the same extra pass.
    """
    unknown = [n for n in names if n != PLAIN and n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} (valid: {PLAIN}, {', '.join(sorted(METHODS))})")
    if len(set(names)) != len(names):
        raise ValueError(f"a method is listed twice: {names}")
    if PLAIN in names and len(names) > 1:
        raise ValueError(f"'plain' means no method and cannot be combined with others: {names}")
    for name in names:
        only = METHODS[name].only_objective if name != PLAIN else None
        if only is not None and objective_name != only[0]:
            raise ValueError(f"{name} needs the {only[0]} objective, not {objective_name!r}: {only[1]}")
    owner: dict[str, str] = {}
    for name in names:
        if name == PLAIN:
            continue
        for pass_name in METHODS[name].passes:
            if pass_name in _SHARED_PASSES:
                continue
            if pass_name in owner:
                raise ValueError(f"{owner[pass_name]} and {name} both fill the extra pass {pass_name!r}")
            owner[pass_name] = name


def min_batch(names: list[str]) -> int:
    """The smallest per-process batch for which every listed method is defined."""
    return max([METHODS[n].min_batch for n in names if n != PLAIN], default=1)


def check_batch_size(names: list[str], batch_size: int) -> None:
    """Raise ValueError naming each method that needs a larger per-process batch than ``batch_size``."""
    short = [f"{n} needs {METHODS[n].min_batch}" for n in names
             if n != PLAIN and METHODS[n].min_batch > batch_size]
    if short:
        raise ValueError(f"per-process batch size {batch_size} is too small: {'; '.join(short)}")


__all__ = ["CBDM", "CCUA", "DiffROP", "Dispersive", "METHODS", "Method", "OCLT", "PLAIN", "PassOutputs", "StepContext",
           "SupCon", "alignment_loss", "cbdm_loss", "check_batch_size", "check_combination", "class_prior",
           "diffrop_loss", "dispersive_loss", "min_batch", "supcon_loss", "ucl_loss"]
