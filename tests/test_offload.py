"""offload.py on the CPU: blocks whose saved activations go to "host memory" (a copy, on a CPU) and come back
give the gradients of keeping everything, the backward fetches them before it asks, and only tensors whose
copy frees memory leave. The CUDA streams' overlap is measured on the GPU: bench/bench_dpo_step.py."""

import pytest
import torch

from model import VideoModel
from offload import ActivationOffload


def lora_model(seed, name="tiny"):
    model = VideoModel.from_pretrained(name)
    model.add_lora(4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero adapters, so their gradients depend on every saved activation
        for p in model.lora_parameters("default"):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def loss_and_gradients(model, seed):
    """model.denoising_error of a batch of 2 (any backbone), backpropagated: (errors, [∂/∂x0, ∂/∂LoRA...])."""
    generator = torch.Generator().manual_seed(seed)
    shape = (2, *model.latent_shape(5, 32, 32))
    x0 = torch.randn(shape, generator=generator).requires_grad_()
    noise = torch.randn(shape, generator=generator)
    text = torch.randn(2, *model.encode_prompt(["a person"]).shape[1:], generator=generator)
    errors = model.denoising_error(x0, noise, torch.tensor([300.0, 700.0]), text)
    errors.sum().backward()
    params = model.lora_parameters("default")
    grads = [x0.grad.clone()] + [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return errors.detach(), grads


# Wan (6 blocks), N = 2 checkpointed and K = 3 offloaded: of the first 5 blocks, 0, 2, 3 (i·5/3 rounded) go to the
# host, 1 and 4 are recomputed (their forward runs again in the backward), block 5 keeps its activations.
# CogVideoX (2 blocks, which return a tuple), N = K = 1: block 0 to the host, block 1 recomputed.
@pytest.mark.parametrize("name, n, k, offloaded, calls_per_block", [
    ("tiny", 2, 3, [0, 2, 3], [1, 2, 1, 1, 2, 1]), ("tiny-cogvideox", 1, 1, [0], [1, 2])])
def test_offloaded_blocks_give_the_gradients_of_keeping_everything_and_arrive_before_they_are_needed(
        name, n, k, offloaded, calls_per_block):
    seed = torch.seed() % 2**31
    model = lora_model(seed, name)
    model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=0)  # every block keeps its activations
    kept_errors, kept_grads = loss_and_gradients(model, seed)

    model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=n, offload_blocks=k)
    model.offload.min_bytes = 0  # the tiny models' tensors are all small
    calls = [0] * len(model.blocks)
    for j, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda module, args, j=j: calls.__setitem__(j, calls[j] + 1))
    errors, grads = loss_and_gradients(model, seed)
    assert calls == calls_per_block
    assert sorted(model.offload.groups) == offloaded
    assert all(model.offload.groups[j] for j in offloaded) and model.offload.offloaded_bytes > 0
    assert model.offload.fetched_late == 0  # each came back while the blocks above it ran their backward
    torch.testing.assert_close(errors, kept_errors, rtol=0, atol=0)
    for ours, theirs in zip(grads, kept_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert sum(g.abs().sum() for g in grads[1:]) > 0


def test_host_buffers_are_reused_once_the_backward_took_them_and_only_then():
    offload = ActivationOffload("cpu", min_bytes=0)
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)

    def step(x):  # a "block": saves exp(x) and x for its backward
        with offload.saving(0):
            return (x.exp() * x).sum()

    def fresh():
        return torch.randn(5, 7, generator=generator, requires_grad=True)

    x = fresh()
    step(x).backward()
    first_buffers = [saved.host for saved in offload.groups[0]]
    x = fresh()
    step(x).backward()  # the next step writes into the same buffers, and computes with its own values
    assert all(a is b for a, b in zip((saved.host for saved in offload.groups[0]), first_buffers))
    torch.testing.assert_close(x.grad, x.detach().exp() * (1 + x.detach()))
    # A forward whose backward has not run yet keeps its buffers: the next forward takes new ones.
    x1, x2 = fresh(), fresh()
    pending = step(x1)
    step(x2).backward()
    pending.backward()
    torch.testing.assert_close(x1.grad, x1.detach().exp() * (1 + x1.detach()))
    torch.testing.assert_close(x2.grad, x2.detach().exp() * (1 + x2.detach()))


def test_a_tensor_saved_twice_in_a_block_travels_once():
    offload = ActivationOffload("cpu", min_bytes=0)
    x = torch.randn(6, 4, requires_grad=True)
    with offload.saving(0):
        y = (x * x).sum()  # mul saves x as both of its inputs
    assert len(offload.groups[0]) == 1 and offload.offloaded_bytes == x.numel() * x.element_size()
    y.backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_a_backward_that_comes_before_any_fetch_still_gets_its_tensors():
    # With the blocks above it not hooked (no offload.fetch_ahead_of), unpack fetches on the spot: slower
    # (counted), never wrong.
    offload = ActivationOffload("cpu", min_bytes=0)
    x = torch.randn(5, 7, requires_grad=True)
    with offload.saving(0):
        y = (x.exp() * x).sum()
    y.backward()
    torch.testing.assert_close(x.grad, x.detach().exp() * (1 + x.detach()))
    assert offload.fetched_late == len(offload.groups[0]) > 0


def test_only_tensors_whose_copy_frees_memory_leave():
    offload = ActivationOffload("cpu", min_bytes=1024)
    whole = torch.randn(64, 64)                              # 16 KiB, its own storage
    assert offload._worth_offloading(whole)
    assert not offload._worth_offloading(torch.randn(8, 8))  # 256 bytes: not worth a copy
    assert not offload._worth_offloading(whole[:32])         # a view: its buffer stays for the rest
    assert not offload._worth_offloading(whole.t())          # not contiguous
    assert not offload._worth_offloading(torch.nn.Parameter(torch.randn(64, 64)))  # weights stay
    assert not offload._worth_offloading(torch.randn(64, 64, dtype=torch.float64, device="meta"))  # elsewhere


@pytest.mark.parametrize("offload_blocks, checkpointed", [(6, None), (1, 0)])
def test_the_offloaded_blocks_are_spread_over_the_first_n_plus_k(offload_blocks, checkpointed):
    model = lora_model(0)
    model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=checkpointed, offload_blocks=offload_blocks)
    model.offload.min_bytes = 0
    loss_and_gradients(model, 0)
    assert sorted(model.offload.groups) == list(range(offload_blocks))


@pytest.mark.parametrize("flags, message", [
    (dict(offload_blocks=2), "with gradient checkpointing"),
    (dict(gradient_checkpointing=True, offload_blocks=-1), "must fit"),
    (dict(gradient_checkpointing=True, checkpoint_blocks=5, offload_blocks=2), "must fit in the transformer's 6"),
])
def test_impossible_block_counts_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        VideoModel.from_pretrained("tiny").enable_speedups(**flags)


def test_train_py_passes_the_flag_to_the_model_and_a_resume_may_change_it(tmp_path):
    # train.py --offload-blocks without --grad-checkpointing (off in the tiny preset) reaches enable_speedups,
    # which refuses it: one line, before any work. And like --checkpoint-blocks it is operational.
    import subprocess
    import sys
    from pathlib import Path

    import run

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repo / "train.py"), "--ref", str(repo / "examples" / "astronaut.jpg"),
                             "--model", "tiny", "--out", str(tmp_path / "run"), "--offload-blocks", "2"],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "--offload-blocks needs --grad-checkpointing" in result.stderr  # flags.py
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "repository").exists()
    assert "offload_blocks" in run.OPERATIONAL_FLAGS
