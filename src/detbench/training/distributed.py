"""Several processes training one cell (``train.ranks``): torch.distributed inside a rank.

Each rank runs ``detbench.training.train.train`` whole; what differs is here. Every rank builds the
same seeded model, draws the same global batch order and keeps its share of each batch
(detbench.data.loader.EpochBatchSampler); DistributedDataParallel averages the ranks'
gradients after every backward. YoloLoss multiplies each rank's loss by the global batch
(its share's size times the ranks, see YoloLoss.ranks), so that average equals the gradient
one process would get from the whole batch: exactly for the objectness term (a mean over all
cells of every image), and up to the per-rank means over matched targets for the box and class
terms. Optimizer, EMA and learning-rate schedule step once per global batch on every rank, as
with one rank, and stay equal across ranks. Rank 0 writes every file (checkpoints, weights,
history, run record, final evaluation); the others end with the last epoch.

How the ranks are started (torchrun's elastic launch on one machine, srun under Slurm) is
detbench.training.launch. Nothing here does anything in a job without a process group (ranks: 1).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from detbench.errors import DetbenchError


@dataclasses.dataclass(frozen=True)
class RankEnv:
    """Where this process stands among the ranks, read from its launcher's variables."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" (elastic launch) or "slurm" (srun)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RankEnv | None:
        """torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, else an srun task's
        SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID with the first host of SLURM_JOB_NODELIST
        (``scontrol show hostnames``) and the MASTER_PORT its launcher chose; None outside
        both (a job of one rank)."""
        env = os.environ if env is None else env
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(
                rank=int(env["RANK"]),
                world_size=int(env["WORLD_SIZE"]),
                local_rank=int(env.get("LOCAL_RANK", "0")),
                master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(env["MASTER_PORT"]),
                launcher="torchrun",
            )
        if "SLURM_PROCID" in env and "MASTER_PORT" in env:
            return cls(
                rank=int(env["SLURM_PROCID"]),
                world_size=int(env["SLURM_NTASKS"]),
                local_rank=int(env.get("SLURM_LOCALID", "0")),
                master_addr=env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"]),
                master_port=int(env["MASTER_PORT"]),
                launcher="slurm",
            )
        return None


def first_host(nodelist: str) -> str:
    """The first host name of a Slurm node list ("node[01-04]" -> "node01")."""
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[0]


def init_process_group(env: RankEnv, device_request: str) -> None:
    """Join the ranks: NCCL where the cell trains on CUDA (rank on GPU ``local_rank``), gloo
    on the CPU. The rendezvous is MASTER_ADDR:MASTER_PORT (TCP store of rank 0)."""
    cuda = device_request != "cpu" and torch.cuda.is_available()
    if cuda:
        visible = torch.cuda.device_count()
        if env.local_rank >= visible:  # NCCL refuses two ranks on one GPU
            raise DetbenchError(
                f"config: key train.ranks: rank {env.rank} needs GPU {env.local_rank} of its "
                f"node, which shows {visible}; lower train.ranks or set train.device: cpu"
            )
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend="nccl" if cuda else "gloo",
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
    )


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes the cell's files: rank 0, or the only process."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: its own GPU (the one init_process_group set) on CUDA."""
    if active() and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def prepare_model(model: nn.Module, sync_bn: bool, device: torch.device) -> nn.Module:
    """SyncBatchNorm in place of BatchNorm, where asked for and possible (CUDA, ranks > 1)."""
    if active() and sync_bn and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_forward(state: Any, device: torch.device) -> None:
    """Train through DistributedDataParallel: ``state.forward`` is the wrapper (gradients are
    averaged over the ranks in backward), ``state.model`` stays the plain module whose
    state_dict the checkpoints, the EMA and the weights file use."""
    if not active():
        return
    model = state.forward if state.forward is not None else state.model
    device_ids = [device.index] if device.type == "cuda" else None
    state.forward = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def epoch_means(sums: np.ndarray, images: int) -> tuple[np.ndarray, int]:
    """An epoch's loss sums averaged over the ranks, and the images all of them trained."""
    if not active():
        return sums, images
    values = torch.tensor([*sums.tolist(), float(images)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values)
    values = values.cpu()
    return (values[:-1] / world_size()).numpy(), int(values[-1].item())


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (whether a checkpoint is due: each rank's clock
    differs, and the ranks must take the same branch)."""
    if not active():
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def barrier() -> None:
    if active():
        dist.barrier()


def shard() -> tuple[int, int]:
    """(rank, ranks): which share of every global batch this process trains."""
    return rank(), world_size()


def gather_ranks(
    device: torch.device, monitor: Any, loader: Any, record_path: Path
) -> list[dict[str, Any]]:
    """run.json's "ranks", in rank order, on every rank: where each rank ran, and the NVML
    figures of its GPU. A rank after the first ends its monitor here (its samples beside
    gpu_samples.csv); rank 0's GPU is run.json's "gpu", filled in by rank 0 afterwards."""
    gpu = None
    if not is_main() and device.type == "cuda":
        gpu = monitor.finish(loader, record_path.with_name(f"gpu_samples.rank{rank()}.csv"))
        gpu = gpu["gpu"]
    entry = {
        "rank": rank(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }
    if not active():
        return [entry]
    entries: list[Any] = [None] * world_size()
    dist.all_gather_object(entries, entry)
    return entries
