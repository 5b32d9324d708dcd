"""Where a process stands in a launch: torchrun's variables as given, or derived from Slurm's.

Every function here reads an environment mapping and returns plain values, so a launch can be
checked without starting one. A launch that cannot work (srun tasks without rank information, a
world size without a rendezvous address, several local ranks on one GPU) is a :class:`LaunchError`
naming the variables and what to do, raised before any process group is joined, instead of N
separate trainings writing into one folder.

Slurm: ``srun`` starting one task per GPU sets, for each task, ``SLURM_PROCID`` (the global rank),
``SLURM_LOCALID`` (the rank on its node), ``SLURM_STEP_NUM_TASKS`` / ``SLURM_NTASKS`` (the world
size) and the step's node list. The rendezvous address is the first host of that list (task 0
runs there), the port ``MASTER_PORT`` or :func:`default_master_port`; an exported
``MASTER_ADDR`` / ``MASTER_PORT`` wins. Under ``srun torchrun ...`` torchrun's variables win.
"""

from __future__ import annotations

import re
from typing import Mapping

from ccua.config import ConfigError

#: the variables torch.distributed's env:// rendezvous and the trainer read
TORCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: where Slurm names the nodes of the current step, most specific first
NODE_LIST_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
#: the rendezvous port without a Slurm job id (torch's own default)
TORCH_DEFAULT_PORT = 29500


class LaunchError(ConfigError):
    """A launch that cannot form one process group; the message names the variables and the fix."""


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compact host list as host names, in order.

    ``node[01-03,7]`` -> node01, node02, node03, node7 (a range keeps the zero padding of its
    lower bound); ``a1,b[2-3]`` -> a1, b2, b3; several bracket groups multiply
    (``r[1-2]n[1-2]`` -> r1n1, r1n2, r2n1, r2n2).
    """
    hosts = [host for item in _split_outside_brackets(text) for host in _expand_item(item, text)]
    if not hosts:
        raise LaunchError(f"the Slurm node list {text!r} names no host")
    return hosts


def _split_outside_brackets(text: str) -> list[str]:
    items, current, depth = [], "", 0
    for char in text.strip():
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise LaunchError(f"cannot read the Slurm node list {text!r}: unbalanced brackets")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise LaunchError(f"cannot read the Slurm node list {text!r}: unbalanced brackets")
    return [item for item in items + [current] if item]


def _expand_item(item: str, whole: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    prefix, rest = item[: match.start()], item[match.end():]
    names = []
    for part in match.group(1).split(","):
        bounds = re.fullmatch(r"(\d+)-(\d+)", part.strip())
        if bounds:
            low, high = bounds.groups()
            values = [f"{value:0{len(low)}d}" for value in range(int(low), int(high) + 1)]
        elif re.fullmatch(r"\d+", part.strip()):
            values = [part.strip()]
        else:
            raise LaunchError(f"cannot read the Slurm node list {whole!r}: {part!r} is not a number or a range")
        names += [name for value in values for name in _expand_item(prefix + value + rest, whole)]
    return names


def default_master_port(job_id: str | None) -> int:
    """20000 + (Slurm job id mod 10000): two jobs sharing a node rarely pick the same port, and
    the port stays below Linux's ephemeral range (32768-60999). 29500 without a job id."""
    if not job_id or not job_id.isdigit():
        return TORCH_DEFAULT_PORT
    return 20000 + int(job_id) % 10000


def _integer(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None or value == "":
        if default is None:
            raise LaunchError(f"{key} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{key}={value!r} is not an integer") from None


def launch_environment(env: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's variables (:data:`TORCH_VARIABLES`) for this process, or {} for one process.

    torchrun (or anyone setting ``RANK`` / ``WORLD_SIZE``) is taken as given and checked; else
    the task of an ``srun`` step with several tasks is mapped from Slurm's variables. LaunchError
    for a launch that cannot work.
    """
    if "RANK" in env or "WORLD_SIZE" in env:
        return _torch_launch(env)
    return _slurm_launch(env)


def _torch_launch(env: Mapping[str, str]) -> dict[str, str]:
    world = _integer(env, "WORLD_SIZE", 1)
    if world <= 1:
        return {}
    if "RANK" not in env:
        raise LaunchError(f"WORLD_SIZE={world} but RANK is not set: start the processes with torchrun, which sets "
                          "RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each")
    rank = _integer(env, "RANK")
    if not 0 <= rank < world:
        raise LaunchError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if not env.get(key)]
    if missing:
        raise LaunchError(f"WORLD_SIZE={world} without a rendezvous address ({' and '.join(missing)} not set): "
                          "launch with torchrun (--rdzv-endpoint HOST:PORT across nodes) or export both")
    _integer(env, "MASTER_PORT")
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(_integer(env, "LOCAL_RANK", 0)),
            "MASTER_ADDR": env["MASTER_ADDR"], "MASTER_PORT": env["MASTER_PORT"]}


def _slurm_launch(env: Mapping[str, str]) -> dict[str, str]:
    ntasks = _integer(env, "SLURM_NTASKS", 1)
    in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    if not in_step:
        if ntasks > 1:  # the batch script or an salloc shell: one process that would wait for the others
            raise LaunchError(f"SLURM_NTASKS={ntasks} but this process is not one of srun's tasks (no SLURM_STEP_ID):"
                              " start one task per GPU with `srun ccua ...` (or torchrun under srun); for a single "
                              "process here, run it with SLURM_NTASKS=1")
        return {}
    world = _integer(env, "SLURM_STEP_NUM_TASKS", ntasks)
    if world <= 1:
        return {}
    rank, local_rank = _integer(env, "SLURM_PROCID"), _integer(env, "SLURM_LOCALID")
    if not 0 <= rank < world:
        raise LaunchError(f"SLURM_PROCID={rank} is outside 0..{world - 1} ({world} tasks in this step)")
    address = env.get("MASTER_ADDR")
    if not address:
        listed = next((env[key] for key in NODE_LIST_VARIABLES if env.get(key)), None)
        if listed is None:
            raise LaunchError(f"{world} Slurm tasks but no node list ({', '.join(NODE_LIST_VARIABLES)}) to find "
                              "task 0's host: export MASTER_ADDR")
        address = expand_hostlist(listed)[0]
    port = env.get("MASTER_PORT") or str(default_master_port(env.get("SLURM_JOB_ID")))
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank), "MASTER_ADDR": address,
            "MASTER_PORT": port}


def device_index(local_rank: int, visible_gpus: int) -> int:
    """The GPU a process with ``local_rank`` uses among the ``visible_gpus`` it sees.

    Its own index when it sees every GPU of the node; index 0 when it sees exactly one (srun
    ``--gpus-per-task=1`` gives each task its own; that no two processes share it is checked once
    the group is formed: :func:`shared_gpus`). LaunchError when local ranks go beyond the GPUs.
    """
    if visible_gpus < 1:
        raise LaunchError("CUDA was asked for but this process sees no GPU (CUDA_VISIBLE_DEVICES?)")
    if local_rank < visible_gpus:
        return local_rank
    if visible_gpus == 1:
        return 0
    raise LaunchError(f"LOCAL_RANK={local_rank} but this process sees only {visible_gpus} GPUs: several processes "
                      "would share one device; start at most one process per GPU (torchrun --nproc_per_node, srun "
                      "--ntasks-per-node) or make every GPU of the node visible")


def shared_gpus(placements: list[tuple[str, str]]) -> list[str]:
    """For (host, GPU uuid) of each rank, one line per GPU that several ranks would share."""
    users: dict[tuple[str, str], list[int]] = {}
    for rank, placement in enumerate(placements):
        users.setdefault(placement, []).append(rank)
    return [f"ranks {', '.join(map(str, ranks))} on {host} all use GPU {uuid}"
            for (host, uuid), ranks in users.items() if len(ranks) > 1]


def torchrun_command(python: str, processes: int, arguments: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node <processes> -m ccua.cli <arguments>`` run by
    ``python`` (torchrun is ``python -m torch.distributed.run``; --standalone picks a free port)."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "ccua.cli", *arguments]


def child_environment(env: Mapping[str, str], gpus: list[int] | None, threads: int) -> dict[str, str]:
    """The environment of a torchrun started from this process: ``gpus`` (indices among the GPUs
    this process sees, mapped through its CUDA_VISIBLE_DEVICES) visible, ``threads`` threads per
    process, and none of this process's own launch variables (it may itself run under a launcher)."""
    child = {key: value for key, value in env.items() if key not in TORCH_VARIABLES and key != "LOCAL_WORLD_SIZE"}
    child["OMP_NUM_THREADS"] = str(threads)
    if gpus is not None:
        visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        child["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i] if visible else str(i) for i in gpus)
    return child


def gpu_group(slot: int, per_run: int) -> list[int]:
    """The GPUs (indices among those visible) of the ``slot``-th of several side-by-side runs."""
    return list(range(slot * per_run, (slot + 1) * per_run))
