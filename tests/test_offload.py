"""offload.py on the CPU: blocks whose saved activations go to "host memory" (a copy, on a CPU) and come back
give the gradients of keeping everything, the backward fetches them before it asks, and only tensors whose
copy frees memory leave. The CUDA streams' overlap is measured on the GPU: bench/bench_dpo_step.py."""

import pytest
import torch

from model import VideoModel
from offload import ActivationOffload


def lora_model(seed):
    model = VideoModel.from_pretrained("tiny")
    model.add_lora(4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero adapters, so their gradients depend on every saved activation
        for p in model.lora_parameters("default"):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def loss_and_gradients(model, seed):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 16, 3, 16, 16, generator=generator, requires_grad=True)
    text = torch.randn(2, 8, model.transformer.config.text_dim, generator=generator)
    out = model.transformer(latents, torch.tensor([300, 700]), text, return_dict=False)[0]
    out.square().mean().backward()
    params = model.lora_parameters("default")
    grads = [latents.grad.clone()] + [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out.detach(), grads


def test_offloaded_blocks_give_the_gradients_of_keeping_everything_and_arrive_before_they_are_needed():
    seed = torch.seed() % 2**31
    model = lora_model(seed)
    model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=0)  # every block keeps its activations
    kept_out, kept_grads = loss_and_gradients(model, seed)

    # 6 blocks, N = 2 checkpointed and K = 3 offloaded: of the first 5, blocks 0, 2, 3 (i·5/3 rounded) go to the
    # host, 1 and 4 are recomputed, block 5 keeps its activations.
    model.enable_speedups(gradient_checkpointing=True, checkpoint_blocks=2, offload_blocks=3)
    model.offload.min_bytes = 0  # the tiny model's tensors are all small
    out, grads = loss_and_gradients(model, seed)
    assert sorted(model.offload.groups) == [0, 2, 3]
    assert all(model.offload.groups[j] for j in (0, 2, 3)) and model.offload.offloaded_bytes > 0
    assert model.offload.fetched_late == 0  # each came back while the blocks above it ran their backward
    torch.testing.assert_close(out, kept_out, rtol=0, atol=0)
    for ours, theirs in zip(grads, kept_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert sum(g.abs().sum() for g in grads[1:]) > 0


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


def test_train_py_flag_reaches_the_model_and_is_operational():
    # --offload-blocks goes through cli.load_model_from_args like --checkpoint-blocks, and like it changes how a
    # run runs, not what it computes: a --resume may change it
    import argparse

    import cli
    import run

    parser = argparse.ArgumentParser()
    cli.add_model_args(parser)
    model = cli.load_model_from_args(parser.parse_args(["--model", "tiny", "--device", "cpu"]),
                                     gradient_checkpointing=True, checkpoint_blocks=1, offload_blocks=2)
    model.offload.min_bytes = 0
    loss_and_gradients(model, 0)
    assert sorted(model.offload.groups) == [0, 2]  # of the first 3 blocks: 0 and 2 (i·3/2 rounded), 1 recomputed
    assert "offload_blocks" in run.OPERATIONAL_FLAGS
