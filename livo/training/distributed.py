"""Process-group plumbing that works the same under torchrun, the deepspeed launcher and a plain single process.

Launchers set `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`; the deepspeed launcher also
passes `--local_rank`. A plain `python -m livo.training.launch` sets none of them, so `ensure_launcher_env` fills
them in for a world of one (with a free port unless `MASTER_PORT` is given). Backends: NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from livo.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; fix the launcher settings") from None


def read_env() -> DistEnv:
    """The rank layout the launcher announced (a world of one when there is no launcher). No side effects."""
    world_size = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local_rank = _int_env("LOCAL_RANK", 0)
    local_world_size = _int_env("LOCAL_WORLD_SIZE", world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} / WORLD_SIZE={world_size} are inconsistent; check the launcher settings")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_world_size)


def _pet_int(name: str) -> int | None:
    """A `PET_*` variable as an integer; None when unset or not a plain number (torchrun also accepts `1:4`, `auto`)."""
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else None


def expected_world_size_from_trainer() -> int | None:
    """The world size the Kubeflow Trainer's torch policy asked for (`PET_NNODES` × `PET_NPROC_PER_NODE`, the
    defaults torchrun reads), or None when those variables are absent (not a TrainJob)."""
    nodes = _pet_int("PET_NNODES")
    if nodes is None:
        return None
    return nodes * (_pet_int("PET_NPROC_PER_NODE") or 1)


def check_not_started_alone() -> None:
    """Refuse a TrainJob node that was started without torchrun: it would train alone (world size 1) and write the
    same output as every other node. torchrun sets WORLD_SIZE; the Trainer only sets `PET_*`."""
    expected = expected_world_size_from_trainer()
    if expected is None or expected <= 1:
        return
    seen = _int_env("WORLD_SIZE", 1)
    if seen == 1:
        raise ConfigError(
            f"PET_NNODES={os.environ.get('PET_NNODES')} PET_NPROC_PER_NODE={os.environ.get('PET_NPROC_PER_NODE', '1')} "
            f"ask for {expected} processes but this one sees world size 1 (started without torchrun); start each node "
            "with `torchrun -m livo.training.launch ...` (the TrainJob's trainer.command)")


def ensure_launcher_env(local_rank_arg: int | None = None) -> DistEnv:
    """Fill in the variables `torch.distributed` needs when no launcher set them; honour `--local_rank`.

    Raises ConfigError when the Kubeflow Trainer announced several processes (`PET_*`) but no launcher started them.
    """
    check_not_started_alone()
    if local_rank_arg is not None and local_rank_arg >= 0:
        os.environ["LOCAL_RANK"] = str(local_rank_arg)
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if _int_env("WORLD_SIZE", 1) > 1:
            raise ConfigError("WORLD_SIZE > 1 but MASTER_PORT is not set; start the ranks with torchrun or deepspeed")
        os.environ["MASTER_PORT"] = str(_free_port())
    return read_env()


def init_process_group(device_type: str) -> None:
    """Start the process group (NCCL on GPU, gloo on CPU) through DeepSpeed, which the engine needs anyway."""
    import deepspeed
    import torch

    if device_type == "cpu":
        # DeepSpeed would otherwise JIT-build its shared-memory op (~95 s) on the first CPU init.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    else:
        torch.cuda.set_device(read_env().local_rank)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if device_type == "cpu" else "nccl",
                                   auto_mpi_discovery=False)


def is_initialized() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    import torch

    if is_initialized():
        torch.distributed.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    import torch

    if not is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    import torch

    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device) -> bool:
    """True on every rank when `flag` is true on at least one (one tiny all-reduce)."""
    import torch

    if not is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values, device):
    """Element-wise mean of a 1-D float tensor over all ranks."""
    import torch

    if not is_initialized():
        return values
    values = values.to(device=device, dtype=torch.float64).clone()
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values / torch.distributed.get_world_size()


def destroy() -> None:
    """End the process group and forget DeepSpeed's cached sub-groups, so that a later run in this process (tests,
    notebooks, `livo run`) starts clean instead of touching groups of the destroyed one."""
    import sys

    import torch

    if is_initialized():
        torch.distributed.destroy_process_group()
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        for name, value in list(vars(groups).items()):
            if name.startswith("_") and name.isupper() and (name.endswith("GROUP") or name.endswith("GROUP_RANKS")):
                setattr(groups, name, {} if isinstance(value, dict) else None)
