"""Training methods added to the denoising loss. ``plain`` means none.

``METHODS`` is the registry of ``method.names``. A method is one module: its :class:`Method`
subclass and its settings dataclass (the config section ``method.<name>``, with the valid values
of each setting beside its default); :func:`register_method` adds both.
"""

from __future__ import annotations

from ccua.config import register_settings
from ccua.methods.base import Method, PassOutputs, StepContext
from ccua.methods.cbdm import CBDM, cbdm_loss, class_prior
from ccua.methods.ccua import CCUA, alignment_loss, ucl_loss
from ccua.methods.diffrop import DiffROP, diffrop_loss
from ccua.methods.dispersive import Dispersive, dispersive_loss
from ccua.methods.oclt import OCLT
from ccua.methods.supcon import SupCon, supcon_loss

#: name -> class; its settings are the section ``method.<name>``
METHODS: dict[str, type[Method]] = {}
#: the name that means no method (plain denoising training)
PLAIN = "plain"
#: what ``ccua compare`` trains when a preset is given without ``--methods``: the baseline and CCUA
DEFAULT_COMPARISON = (PLAIN, "ccua")

# Passes the trainer provides itself; any other pass name is filled by exactly one method.
_SHARED_PASSES = ("cond", "uncond")


def register_method(method: type[Method]) -> type[Method]:
    """Make ``method.names=[<method.name>]`` train ``method``, with its settings (if it has any) as
    the config section ``method.<name>``. Also usable as a class decorator."""
    if method.name == PLAIN or not method.name.isidentifier():
        raise ValueError(f"a method needs a name that is a Python identifier other than {PLAIN!r}, got {method.name!r}")
    METHODS[method.name] = method
    if method.settings is not None:
        register_settings("method", method.name, method.settings)
    return method


register_method(CCUA)
register_method(CBDM)
register_method(OCLT)
register_method(Dispersive)
register_method(SupCon)
register_method(DiffROP)


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


__all__ = ["CBDM", "CCUA", "DEFAULT_COMPARISON", "DiffROP", "Dispersive", "METHODS", "Method", "OCLT", "PLAIN",
           "PassOutputs", "StepContext", "SupCon", "alignment_loss", "cbdm_loss", "check_combination", "class_prior",
           "diffrop_loss", "dispersive_loss", "register_method", "supcon_loss", "ucl_loss"]
