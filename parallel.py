"""parallel.py — the same run on several GPUs, through `accelerate launch`.

    accelerate launch --num_processes 2 train.py --ref me.jpg --out runs/me

Two kinds of work, split two ways (accelerate starts the processes and the process group; this file
only says who does what):

  * independent jobs (generate + score one video): process r takes jobs r, r + P, r + 2P, ... and
    writes each result as its own file, atomically; a barrier, then everyone reads everything.
  * the optimizer step: the global batch of items i = 0..B−1 is split the same way; each process
    backpropagates Σ_{its i} loss_i / B, and the gradients are summed across processes:
        ∇ (1/B) Σ_i loss_i = Σ_processes ∇ (1/B) Σ_{i ∈ process} loss_i
    Every item's noise and timestep come from a seed of (step, i), so the loss curve is the one of a
    single GPU at the same global batch, up to float summation order.

With one process every function here is a no-op. Exports: shard, barrier, sum_across, is_main, device.
"""

from __future__ import annotations

import torch


def _state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # no GPU: CPU processes over gloo


def rank_and_world() -> tuple[int, int]:
    state = _state()
    return state.process_index, state.num_processes


def is_main() -> bool:
    return _state().is_main_process


def device() -> torch.device:
    """This process's device: cuda:<local rank> under accelerate, else cuda, else cpu."""
    return _state().device


def shard(jobs: list) -> list:
    """This process's share of `jobs` (every P-th, starting at its rank)."""
    rank, world = rank_and_world()
    return jobs[rank::world]


def barrier() -> None:
    _state().wait_for_everyone()


def sum_across(tensors: list[torch.Tensor]) -> None:
    """In place: each tensor becomes its sum over all processes (one flat all-reduce)."""
    _, world = rank_and_world()
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
