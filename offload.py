"""offload.py — a block's saved activations wait in host memory instead of being recomputed.

Training keeps, for every transformer block, the tensors its backward will need: ~1.45 GiB a block for a
33-frame DPO pair on Wan2.1-1.3B, 44 GiB for the 30 blocks. Checkpointing (speedups.py) frees them and
recomputes them in the backward, ~4.3 ms a block on an H100. Offloading frees them without recomputing: each
tensor goes to pinned host memory as the forward saves it, on a stream of its own, and comes back on another
stream a few blocks before the backward reaches it:

    forward    block k saves a  ->  copy stream: a -> host        a's GPU memory is reused once the copy has run
    backward   reaching block j ->  fetch stream: host -> GPU     for the offloaded blocks j-1 .. j-LOOKAHEAD,
                                                                  so each arrives while the blocks above it run

It costs nothing only while the copies hide under compute, and the link is the limit: ~55 GB/s each way on an
H100 (bench/bench_host_link.py), about 6 blocks' worth during the ~0.19 s forward of a DPO step. So a few
blocks, spread out evenly so that each one's copy has the forward of the blocks after it to run under
(speedups.py chooses them).

The mechanism is torch.autograd.graph.saved_tensors_hooks: `pack` sees every tensor autograd saves (compiled
blocks' too) and returns what to keep instead, `unpack` turns that back into the tensor in the backward.
PyTorch's own torch.autograd.graph.save_on_cpu uses the same hooks but copies on the compute stream and waits
for each copy, so the GPU would stall on every one; the compiler's activation offloading
(torch._functorch.config.enable_activation_offloading) is marked "testing purpose" in torch 2.11-2.13 and no
checkpoint policy selects tensors for it yet.

Only tensors worth a copy leave: at least `min_bytes`, contiguous, covering their whole storage (so that
dropping them frees memory: a view of a bigger buffer would not), and not a parameter; a tensor saved twice
in one block (eager layers sharing an input) travels once. Each block's pinned host buffers are reused from one
step to the next once the backward has taken their contents (pinned allocations are slow: allocating them every
step made offloading slower than recomputing). On a CPU the "host copy" is a plain copy, which keeps the
bookkeeping testable (tests/test_offload.py); the streams are checked on the GPU (bench/bench_dpo_step.py).

Exports: ActivationOffload.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch

LOOKAHEAD = 3  # blocks: the backward of ~3 blocks (~50 ms) covers one block's fetch (~28 ms) with room


class _Saved:
    """One offloaded tensor: its host copy, and its way back."""

    __slots__ = ("source", "host", "copied", "gpu", "fetched", "uses")

    def __init__(self, source, host, copied):
        self.source = weakref.ref(source)                  # to recognise the same tensor saved again (while alive)
        self.host, self.copied = host, copied              # copied: CUDA event (None on a CPU)
        self.gpu, self.fetched = None, None                # set by a fetch
        self.uses = 1                                      # saves of it still to be unpacked


class ActivationOffload:
    """Saved activations of chosen blocks to the host in the forward, back ahead of the backward.

    Use: `with offload.saving(j): out = block(...)` around block j's forward, then `offload.fetch_ahead_of(out, j)`
    on every block's output so the backward starts fetching before it needs anything.
    """

    def __init__(self, device: torch.device, min_bytes: int = 16 * 2**20):
        self.device, self.min_bytes = torch.device(device), min_bytes
        self.on_gpu = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.on_gpu else None
        self.fetch_stream = torch.cuda.Stream(self.device) if self.on_gpu else None
        self.groups: dict[int, list[_Saved]] = {}  # block index -> what its last forward offloaded
        self.offloaded_bytes = 0  # sent to the host so far (benches and tests read these two)
        self.fetched_late = 0     # tensors the backward asked for before a fetch ahead had started: a stall

    @contextlib.contextmanager
    def saving(self, block_index: int):
        """Around one block's forward: the big tensors it saves for backward go to the host."""
        # The block's host buffers from the step before are reused, in order, once the backward took them back
        # (a forward that was never backpropagated keeps its own).
        reusable = [saved for saved in self.groups.get(block_index, ()) if saved.uses == 0]
        group = self.groups[block_index] = []
        with torch.autograd.graph.saved_tensors_hooks(functools.partial(self._pack, group, reusable), self._unpack):
            yield

    def fetch_ahead_of(self, block_output: torch.Tensor, block_index: int) -> None:
        """When the backward reaches this block (its output's gradient is ready), fetch the offloaded blocks
        below it, LOOKAHEAD of them, so their tensors are back before their own backward asks."""
        if block_output.requires_grad:
            block_output.register_hook(functools.partial(self._fetch_below, block_index))

    def release(self) -> None:
        """Drop the host buffers (after a training stage): the next forward allocates its own."""
        self.groups.clear()

    # ------------------------------------------------------------------ the hooks

    def _pack(self, group: list, reusable: list, tensor: torch.Tensor):
        if not self._worth_offloading(tensor):
            return tensor
        for saved in group:
            if saved.source() is tensor:  # already on its way
                saved.uses += 1
                return saved
        host = self._host_buffer(reusable, tensor)
        copied = None
        if self.on_gpu:
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))  # the tensor has been computed
            with torch.cuda.stream(self.copy_stream):
                host.copy_(tensor, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record()
            # Its memory goes back to the allocator when the forward drops it; record_stream keeps anyone else
            # from getting it before the copy has run.
            tensor.record_stream(self.copy_stream)
        else:
            host.copy_(tensor)
        saved = _Saved(tensor, host, copied)
        self.offloaded_bytes += tensor.numel() * tensor.element_size()
        group.append(saved)
        return saved

    def _host_buffer(self, reusable: list, tensor: torch.Tensor) -> torch.Tensor:
        """The next buffer this block used last step if it fits, else a new (pinned) one."""
        old = reusable.pop(0) if reusable else None
        if old is None or old.host.shape != tensor.shape or old.host.dtype != tensor.dtype:
            return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.on_gpu)
        if old.fetched is not None:  # its last trip back to the GPU must have run before it is overwritten
            self.copy_stream.wait_event(old.fetched)
        return old.host

    def _unpack(self, packed):
        if not isinstance(packed, _Saved):
            return packed
        if packed.gpu is None:  # not fetched ahead: the GPU waits for this copy
            self.fetched_late += 1
            self._fetch(packed)
        tensor = packed.gpu
        packed.uses -= 1
        if packed.uses == 0:  # the last save of it: the GPU copy goes with the backward, the host buffer is free
            packed.gpu = None
        if self.on_gpu:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(packed.fetched)
            tensor.record_stream(compute)  # allocated on the fetch stream, used and freed on this one
        return tensor

    def _fetch_below(self, block_index: int, grad: torch.Tensor) -> None:
        for j in range(block_index - 1, block_index - 1 - LOOKAHEAD, -1):
            for saved in self.groups.get(j, ()):
                if saved.gpu is None:
                    self._fetch(saved)

    def _fetch(self, saved: _Saved) -> None:
        if not self.on_gpu:
            saved.gpu = saved.host.clone()  # a CPU stands in for the device
            return
        with torch.cuda.stream(self.fetch_stream):
            self.fetch_stream.wait_event(saved.copied)  # the host copy is complete
            saved.gpu = saved.host.to(self.device, non_blocking=True)
            saved.fetched = torch.cuda.Event()
            saved.fetched.record()

    def _worth_offloading(self, tensor: torch.Tensor) -> bool:
        nbytes = tensor.numel() * tensor.element_size()
        return (nbytes >= self.min_bytes and tensor.device == self.device and not isinstance(tensor, torch.nn.Parameter)
                and tensor.is_contiguous() and tensor.untyped_storage().nbytes() == nbytes)
