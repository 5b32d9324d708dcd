"""One process, or many: joining the process group, the collectives the library uses, and work
split across the processes.

A process joins a group when torchrun (one or many nodes, c10d rendezvous) or ``srun`` with one
task per GPU started it (:mod:`ccua.launch` reads the variables); otherwise everything runs in
this one process and the helpers below are plain calls. On GPUs the group is
``cpu:gloo,cuda:nccl``: tensors on the GPU (gradients, losses) go through NCCL, Python objects
(random states, sample images on their way to process 0) through gloo in host memory, so
gathering a large sample set never fills GPU memory.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as torch_dist

from ccua.devices import default_device
from ccua.launch import LaunchError, device_index, launch_environment, shared_gpus

#: how long a process waits in a collective for the others before it gives up. Process 0 alone
#: writes checkpoints and scores evaluations while the others wait: torch's own default for NCCL,
#: 10 minutes, can be too short for that on a slow file system (``train.dist_timeout_minutes``).
DEFAULT_TIMEOUT_MINUTES = 30.0

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device | None = None,
                     timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistInfo:
    """Join the process group when launched by torchrun or srun; else one process on ``device``.

    LaunchError (before joining) for a launch that cannot work; see :mod:`ccua.launch`.
    """
    device = default_device(device)
    launch = launch_environment(os.environ)
    if not launch:
        return DistInfo(device=device)
    os.environ.update(launch)  # the env:// rendezvous reads MASTER_ADDR and MASTER_PORT (mapped from Slurm's)
    rank, world, local_rank = int(launch["RANK"]), int(launch["WORLD_SIZE"]), int(launch["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", device_index(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", rank=rank,
                                world_size=world, timeout=datetime.timedelta(minutes=timeout_minutes))
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)
    if device.type == "cuda":
        _refuse_shared_gpus(info)
    return info


def _refuse_shared_gpus(info: DistInfo) -> None:
    """LaunchError on every process when two of them picked the same GPU (checked over gloo,
    before NCCL would fail on it with a less clear message). Skipped where torch does not tell
    the GPU's uuid."""
    uuid = getattr(torch.cuda.get_device_properties(info.device), "uuid", None)
    placements = gather_objects(None if uuid is None else (socket.gethostname(), str(uuid)), info)
    if None in placements:
        return
    problems = shared_gpus(placements)
    if problems:
        raise LaunchError(f"{'; '.join(problems)}: start one process per GPU (each sees its own, or LOCAL_RANK "
                          "picks one of those it sees)")


@contextlib.contextmanager
def process_group(device: str | torch.device | None = None,
                  timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Iterator[DistInfo]:
    """:func:`init_distributed` for the block, then :func:`cleanup`. A process leaving the block
    with an error leaves the group at once: waiting in a barrier for processes still at work
    would hang it, and the launcher (torchrun, srun --kill-on-bad-exit) stops the others."""
    info = init_distributed(device, timeout_minutes)
    try:
        yield info
    except BaseException:
        cleanup(None)
        raise
    cleanup(info)


class PeerLost(RuntimeError):
    """A collective failed because another process of the launch is gone (killed, or its node lost)."""


#: what gloo and NCCL say when the other end of a collective has gone away
_LOST_PEER_SIGNS = ("connection reset by peer", "connection closed by peer", "broken pipe", "socket timeout",
                    "connection refused", "communicator was aborted", "timed out")


@contextlib.contextmanager
def collective(info: DistInfo, what: str = "a collective"):
    """Turn the transport error of a collective whose peer died into one :class:`PeerLost` saying
    which process this is and which one was lost (the other one, in a launch of two)."""
    try:
        yield
    except RuntimeError as error:
        text = " ".join(str(error).split()).lower()
        sign = next((sign for sign in _LOST_PEER_SIGNS if sign in text), None)
        if not info.enabled or sign is None:
            raise
        others = [r for r in range(info.world_size) if r != info.rank]
        lost = f"process {others[0]}" if len(others) == 1 else f"another of the {info.world_size} processes"
        raise PeerLost(f"process {info.rank} of {info.world_size}: {lost} of the launch was lost during {what} "
                       f"({type(error).__name__}: {sign})") from None


def barrier(info: DistInfo) -> None:
    if info.enabled:
        with collective(info, "a barrier"):
            torch_dist.barrier()


def cleanup(info: DistInfo | None) -> None:
    """Leave the process group. With ``info`` (the group was formed) after a barrier, since
    destroying it while a peer is still in a collective aborts at exit; without (setting up
    failed) at once."""
    if not torch_dist.is_initialized():
        return
    if info is not None and info.enabled:
        try:
            torch_dist.barrier()
        except RuntimeError:  # a peer is gone (the error that ended the run says so): leave anyway
            pass
    torch_dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        tensor = tensor.clone()
        with collective(info, "the all-reduce of a step"):
            torch_dist.all_reduce(tensor)
        tensor /= info.world_size
    return tensor


def gather_objects(obj: Any, info: DistInfo) -> list:
    """Every process's ``obj``, in rank order (a one-item list in one process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    with collective(info, "a gather"):
        torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Process 0's ``obj`` on every process."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(function: Callable[[], T], info: DistInfo) -> T:
    """``function()`` on process 0 only (a folder to create, a cache to look up); its result, or
    the error it raised, reaches every process, so all of them go on or stop together."""
    if not info.enabled:
        return function()
    outcome: tuple[bool, Any] = (True, None)
    if info.is_main:
        try:
            outcome = (True, function())
        except Exception as error:  # noqa: BLE001 - raised again below, on every process
            outcome = (False, error)
    succeeded, value = broadcast_object(outcome, info)
    if not succeeded:
        raise value
    return value


def shared_map(function: Callable[[int], T], count: int, info: DistInfo) -> list[T] | None:
    """``function(i)`` for i in 0 .. count - 1, item i computed by process i mod world size.

    Process 0 returns every result in order, the others None. Results travel to process 0 one
    round (one item per process) at a time, so a large result set (sample images) never sits
    in a collective at once. In one process: the plain list.
    """
    if not info.enabled:
        return [function(i) for i in range(count)]
    results: list[T] | None = [] if info.is_main else None
    for first in range(0, count, info.world_size):
        index = first + info.rank
        mine = function(index) if index < count else None
        received = [None] * info.world_size if info.is_main else None
        torch_dist.gather_object(mine, received, dst=0)
        if results is not None:
            results.extend(received[: min(info.world_size, count - first)])
    return results


def own_items(count: int, info: DistInfo) -> range:
    """The items of 0 .. count - 1 that :func:`shared_map` gives this process."""
    return range(info.rank, count, info.world_size)


__all__ = ["DEFAULT_TIMEOUT_MINUTES", "DistInfo", "LaunchError", "all_reduce_mean", "barrier", "broadcast_object",
           "cleanup", "gather_objects", "init_distributed", "on_main", "own_items", "process_group", "shared_map"]
