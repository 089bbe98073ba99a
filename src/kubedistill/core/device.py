"""Distributed helpers: torchrun environment, process group, device choice."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from kubedistill.core.errors import ConfigError


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (-1, -1, 1) when not distributed."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return -1, -1, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), ws


def select_device(device: str, local_rank: int = -1) -> torch.device:
    d = (device or "").strip().lower()
    if d in ("", "auto"):
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.isdigit():
        d = f"cuda:{d}"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} asks for CUDA but no CUDA GPU is visible", "Use device=cpu or run on a GPU node"
            )
        if local_rank >= 0:
            d = f"cuda:{local_rank}"
    elif d not in ("cpu", "mps"):
        raise ConfigError(f"Unknown device {device!r}", "Use '', 'cpu', 'cuda' or 'cuda:N'")
    return torch.device(d)


def init_distributed(device: torch.device, world_size: int) -> None:
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def all_gather_object(obj) -> list:
    """`obj` of every rank, in rank order ([obj] when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def any_true(flag: bool, device: torch.device) -> bool:
    """True if flag is True on any rank."""
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
    return flag


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if flag is True on every rank."""
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())
    return flag


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
