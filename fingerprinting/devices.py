"""Where the work runs: the device for `--cuda N`, and the torchrun process group."""

import os
from dataclasses import dataclass

import torch

from fingerprinting.errors import UserError


def select_device(cuda_index):
    """torch.device for `--cuda N`: CUDA device N if present, else CPU; -1 = CPU."""
    if cuda_index >= 0 and torch.cuda.is_available():
        if cuda_index >= torch.cuda.device_count():
            raise UserError(f"--cuda {cuda_index}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(f"cuda:{cuda_index}")
    return torch.device("cpu")


@dataclass
class Distributed:
    """Where this process sits in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(cuda_index):
    """Join the torchrun process group when launched by torchrun.

    Returns (Distributed, device): NCCL on CUDA (one GPU per local rank),
    Gloo on CPU. Plain `python script.py` gets rank 0 of 1 and no group.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(), select_device(cuda_index)
    import torch.distributed as dist

    context = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    use_cuda = cuda_index >= 0 and torch.cuda.is_available()
    device = torch.device(f"cuda:{context.local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return context, device


def barrier(context):
    if context.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def close_distributed(context):
    if context.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def gather(value, context):
    """[value of rank 0, value of rank 1, ...] on every rank ([value] alone)."""
    if context.world_size == 1:
        return [value]
    import torch.distributed as dist

    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


