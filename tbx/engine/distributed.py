"""Multi-process training: DDP over torchrun, on one machine or several.

``tbx train`` runs as one process per GPU under torchrun; it reads the usual torchrun environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process
group (NCCL on CUDA, gloo on CPU).  Only rank 0 writes files; every rank trains on its slice of
each global batch (:class:`tbx.data.dataset.EpochBatchSampler`), so the schedule (batch size in
images, iterations per epoch) does not depend on the number of GPUs.

One machine, N GPUs::

    tbx train symformer --data TBX11K --out runs/sym --gpus 4
    # same as: torchrun --standalone --nproc_per_node 4 -m tbx train symformer --data TBX11K --out runs/sym

Several machines (run on each node, same rendezvous endpoint; node 0's address)::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node0:29500 \
        --rdzv_id sym1 -m tbx train symformer --data /shared/TBX11K --out /shared/runs/sym

The data root and the run directory must be reachable from every node (shared filesystem); the
checkpoints written by rank 0 are what ``--resume`` continues from on any node count that divides
the batch size.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tbx.errors import TbxError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str) -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (no-op otherwise)."""
    world = env_world_size()
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, False)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TbxError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs visible",
                fix="lower --nproc_per_node / --gpus",
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, True)


def shutdown(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= ctx.world_size
    return t


def torchrun_command(nproc: int, args: list[str], standalone: bool = True) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node N -m tbx ARGS``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if standalone:
        cmd.append("--standalone")
    return cmd + ["-m", "tbx", *args]


def launch(nproc: int, args: list[str]) -> int:
    """Run ``tbx ARGS`` under torchrun with ``nproc`` processes on this machine; return its code."""
    if nproc < 1:
        raise TbxError(f"--gpus must be ≥ 1, got {nproc}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(torchrun_command(nproc, args), env=env)


def command_line(
    *positional: str,
    options: dict[str, object | None],
    repeated: dict[str, list[str]] | None = None,
    flags: dict[str, bool] | None = None,
) -> list[str]:
    """``tbx`` arguments: the positionals, then ``--opt value`` for every option that is not None
    (in order), every value of a repeatable option, and the flags that are set."""
    args = list(positional)
    for opt, value in options.items():
        if value is not None:
            args += [opt, str(value)]
    for opt, values in (repeated or {}).items():
        for value in values:
            args += [opt, value]
    return args + [opt for opt, on in (flags or {}).items() if on]


def relaunch(nproc: int, args: list[str], echo: Callable[[str], object] = print) -> None:
    """Run ``tbx ARGS`` as ``nproc`` torchrun processes on this machine (``--gpus N``); a failed
    rank is a :class:`TbxError`."""
    echo(f"launching {nproc} processes: {' '.join(torchrun_command(nproc, args))}")
    code = launch(nproc, args)
    if code:
        raise TbxError(
            f"distributed training failed (exit code {code})", fix="see the messages of the ranks above"
        )
