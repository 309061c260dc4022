"""attention.py's operator and its wiring, and speedups' attention choices, on the CPU.

The operator's CPU path runs FlashAttention's equations in plain torch; here it is held against autograd of the
naive softmax(QKᵀ)V in float64, and the wiring (diffusers' dispatch → our operator, torch.compile without graph
breaks, selective checkpointing) against the stock SDPA path of a real Wan transformer. The FA4 kernel itself is
compared with SDPA on the GPU: bench/bench_attention.py.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import attention
import speedups
from model import VideoModel


def naive_attention(q, k, v, scale):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def test_operator_matches_float64_autograd_of_naive_attention():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, tokens, heads, dim = 2, 11, 3, 16
    q, k, v = (torch.randn(batch, tokens, heads, dim, generator=generator, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    scale = 0.3
    out = attention.flash_attention(q, k, v, softmax_scale=scale)
    reference = naive_attention(q, k, v, scale)
    # the CPU path computes in float32 (FA4's accumulators): agreement to float32 rounding, not float64
    torch.testing.assert_close(out, reference, atol=2e-6, rtol=0)
    grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    ours = torch.autograd.grad(out, (q, k, v), grad_out)
    theirs = torch.autograd.grad(reference, (q, k, v), grad_out)
    for name, a, b in zip("qkv", ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"d{name}")


def test_default_scale_is_one_over_sqrt_head_dim():
    q, k, v = (torch.randn(1, 5, 2, 64) for _ in range(3))
    torch.testing.assert_close(attention.flash_attention(q, k, v), naive_attention(q, k, v, 64 ** -0.5),
                               atol=1e-5, rtol=0)


def test_fake_shapes_match_the_real_ones():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v = torch.randn(2, 7, 3, 8), torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 4)  # cross-attention shapes
    real = torch.ops.magicid.flash_attention(q, k, v, 0.5)
    with FakeTensorMode() as mode:
        fake = torch.ops.magicid.flash_attention(*(mode.from_tensor(t) for t in (q, k, v)), 0.5)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]


def test_opcheck_schema_fake_and_autograd_registration():
    # torch's own checker: the fake agrees with the real outputs (shapes, strides, dtypes), autograd is registered,
    # and torch.compile can trace the operator — with non-contiguous inputs, as diffusers passes them
    q, k, v = (torch.randn(2, 3, 9, 16).transpose(1, 2).requires_grad_() for _ in range(3))
    torch.library.opcheck(torch.ops.magicid.flash_attention.default, (q, k, v, 0.25))


def wan_inputs(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, 3, 16, 16, generator=generator, requires_grad=True)
    text = torch.randn(1, 8, model.transformer.config.text_dim, generator=generator)
    return latents, torch.tensor([500]), text


def forward_backward(model, inputs):
    latents, t, text = inputs
    latents.grad = None
    out = model.transformer(latents, t, text, return_dict=False)[0]
    out.square().mean().backward()
    return out.detach(), latents.grad.clone()


def test_wan_through_diffusers_dispatch_equals_sdpa_and_compiles_without_graph_breaks():
    model = VideoModel.from_pretrained("tiny")
    inputs = wan_inputs(model, seed=torch.seed() % 2**31)
    out_sdpa, grad_sdpa = forward_backward(model, inputs)
    attention.use_flash_attention_4(model.transformer)
    processors = [m.processor for m in model.transformer.modules() if hasattr(getattr(m, "processor", None),
                                                                              "_attention_backend")]
    assert processors and all(p._attention_backend.value == "flash_4_hub" for p in processors)

    class CountOurOp(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountOurOp.calls += func is torch.ops.magicid.flash_attention.default
            return func(*args, **(kwargs or {}))

    with CountOurOp():
        out_ours, grad_ours = forward_backward(model, inputs)
    assert CountOurOp.calls == len(processors)  # every attention went through the operator
    torch.testing.assert_close(out_ours, out_sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_sdpa, atol=1e-5, rtol=1e-4)
    explained = torch._dynamo.explain(model.transformer.blocks[0])(
        torch.randn(1, 48, 128), torch.randn(1, 8, 128), torch.randn(1, 6, 128),
        (torch.randn(1, 48, 1, 32), torch.randn(1, 48, 1, 32)))
    assert explained.graph_break_count == 0, explained.break_reasons


class CountAttention(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in speedups.ATTENTION_OPS
        return func(*args, **(kwargs or {}))


def test_keep_attention_reruns_no_attention_in_backward_and_changes_no_gradient():
    results = {}
    for keep in (False, True):
        model = VideoModel.from_pretrained("tiny")
        model.enable_speedups(gradient_checkpointing=True, keep_attention=keep, attention_backend="sdpa")
        with CountAttention() as counter:
            results[keep] = forward_backward(model, wan_inputs(model, seed=3))
        results[keep] += (counter.calls,)
    attention_modules = 2 * len(model.transformer.blocks)  # self- and cross-attention per block
    assert results[False][2] == 2 * attention_modules  # plain checkpointing: forward, then again in backward
    assert results[True][2] == attention_modules       # kept: forward only
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-6, rtol=1e-6)


def test_attention_choice_on_the_cpu(capsys):
    assert "CUDA" in attention.flash_attention_4_unavailable("cpu")
    model = VideoModel.from_pretrained("tiny")
    model.enable_speedups()                       # default: SDPA on a CPU, silently
    assert capsys.readouterr().out == ""
    model.enable_speedups(attention_backend="fa4")  # asked for: falls back, and says why
    assert "PyTorch SDPA (FlashAttention-4 runs on CUDA GPUs, not on cpu)" in capsys.readouterr().out
    assert all(getattr(m.processor, "_attention_backend", None) is None
               for m in model.transformer.modules() if getattr(m, "processor", None) is not None)


def test_train_py_checkpointing_keeps_attention_outputs():
    # cli.load_model_from_args is how train.py loads: with checkpointing on (and not the low-memory path),
    # the backward reruns no attention
    import argparse

    import cli

    parser = argparse.ArgumentParser()
    cli.add_model_args(parser)
    model = cli.load_model_from_args(parser.parse_args(["--model", "tiny", "--device", "cpu"]),
                                     gradient_checkpointing=True)
    with CountAttention() as counter:
        forward_backward(model, wan_inputs(model))
    assert counter.calls == 2 * len(model.transformer.blocks)


def test_two_experts_recompute_attention_on_an_80_gb_gpu():
    # Measured on an H100 80GB (bench/NOTES.md): the A14B's DPO step keeping attention ran out of memory, recomputing
    # it fit at 73.8 GiB. One expert keeps it whatever the GPU; two keep it from 120 GiB (an H200) up; the
    # low-memory path and runs without checkpointing never do; the CPU (no GPU size) keeps it.
    keeps = speedups.keeps_attention
    assert keeps(True, False, 1, 79.2) and keeps(True, False, 1, None)
    assert not keeps(True, False, 2, 79.2)
    assert keeps(True, False, 2, 139.8) and keeps(True, False, 2, None)
    assert not keeps(True, True, 1, 79.2) and not keeps(False, False, 1, 139.8)
    assert not keeps(True, False, 2, speedups.KEEP_ATTENTION_TWO_EXPERTS_MIN_GIB - 0.5)
