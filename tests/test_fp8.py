"""fp8.py: the FP8 linear layer against float64 arithmetic, and the tiny Wan with FP8 base weights and peft LoRAs."""

import argparse
import copy

import pytest
import torch
from safetensors.torch import load_file

import fp8
from cli import add_model_args, load_model_from_args
from lora import LORA_FILE
from model import ModelLoadError, VideoModel
from run import OPERATIONAL_FLAGS, run_settings


def round_to_e4m3(v: torch.Tensor) -> torch.Tensor:
    """The e4m3 value nearest to each float64 entry (ties to even), from the format's definition: 3 mantissa
    bits, so 8 steps per binade [2^e, 2^(e+1)); below 2⁻⁶ the subnormals keep 2⁻⁶'s step, 2⁻⁹."""
    binade = torch.floor(torch.log2(v.abs().clamp(min=2.0**-6)))
    step = 2.0 ** (binade - 3)
    return torch.round(v / step) * step


def quantized_by_rows(t64: torch.Tensor) -> torch.Tensor:
    """s · round_e4m3(t / s) with s = (row max |t|) / 448, all in float64."""
    scale = t64.abs().amax(dim=1, keepdim=True) / 448
    return round_to_e4m3(t64 / scale) * scale


def wide_range_operands(generator):
    """x [37, 64] and a linear layer 64 -> 48 (bf16), rows spanning six decades: one scale per tensor, or none,
    would flush the small rows to zero or clip the large ones. 37 rows: M needs no multiple of 16."""
    x = torch.randn(37, 64, generator=generator) * 10 ** (torch.rand(37, 1, generator=generator) * 6 - 3)
    linear = torch.nn.Linear(64, 48).requires_grad_(False)
    linear.weight.copy_(torch.randn(48, 64, generator=generator) * 10 ** (torch.rand(48, 1, generator=generator) * 3 - 2))
    linear.bias.copy_(torch.randn(48, generator=generator))
    return x.bfloat16(), linear.bfloat16()


def test_fp8_layer_multiplies_the_row_quantized_operands():
    x, linear = wide_range_operands(torch.Generator().manual_seed(0))
    layer = fp8.FP8Linear(linear)
    w_q = quantized_by_rows(linear.weight.double())                                    # [48, 64]
    stored = layer.weight.double() * layer.weight_scale.double().t()                   # s_W ⊙ W_q
    assert torch.allclose(stored, w_q, rtol=1e-6, atol=0)  # s_W is fp32: 2⁻²⁴ from the float64 scale
    x_q = quantized_by_rows(x.double())
    expected = x_q @ w_q.t() + linear.bias.double()                                     # [37, 48]
    out = layer(x).double()
    assert layer(x).dtype == torch.bfloat16
    # bf16 output: within half a bf16 step of each value (2⁻⁹ relative), plus fp32 accumulation
    tolerance = 2.0**-8 * expected.abs() + 1e-6 * (x_q.abs() @ w_q.abs().t())
    assert ((out - expected).abs() <= tolerance).all()


def test_fp8_error_to_the_exact_product_is_within_the_e4m3_bound():
    for seed in range(3):
        x, linear = wide_range_operands(torch.Generator().manual_seed(100 + seed))
        out = fp8.FP8Linear(linear)(x).double()
        x64, w64 = x.double(), linear.weight.double()
        exact = x64 @ w64.t() + linear.bias.double()

        def rounding(t):  # |round_e4m3(v) − v| per entry: 2⁻⁴ relative, 2⁻¹⁰·s absolute among the subnormals
            scale = t.abs().amax(dim=1, keepdim=True) / 448
            return torch.maximum(2.0**-4 * t.abs(), 2.0**-10 * scale)

        dx, dw = rounding(x64), rounding(w64)
        bound = x64.abs() @ dw.t() + dx @ w64.abs().t() + dx @ dw.t() + 2.0**-8 * exact.abs()
        assert ((out - exact).abs() <= bound).all()


def test_gradient_to_the_input_is_that_of_the_dequantized_weight():
    x, linear = wide_range_operands(torch.Generator().manual_seed(1))
    layer = fp8.FP8Linear(linear)
    grad_out = torch.randn(37, 48, generator=torch.Generator().manual_seed(2)).bfloat16()
    x.requires_grad_(True)
    layer(x).backward(grad_out)

    w_deq = layer.weight.double() * layer.weight_scale.double().t()                    # [48, 64]
    x64 = x.detach().double().requires_grad_(True)
    (x64 @ w_deq.t()).backward(grad_out.double())                                      # float64 autograd
    # bf16 rounding of W_deq (2⁻⁹ per entry) and of the result
    tolerance = 2.0**-8 * x64.grad.abs() + 2.0**-9 * (grad_out.double().abs() @ w_deq.abs())
    assert x.grad.dtype == torch.bfloat16
    assert ((x.grad.double() - x64.grad).abs() <= tolerance).all()


def test_frozen_fp8_weights_get_no_gradient_and_trainable_layers_stay():
    trained = torch.nn.Linear(32, 32)  # requires grad: not frozen, so not converted
    frozen = torch.nn.Linear(32, 16).bfloat16().requires_grad_(False)
    odd = torch.nn.Linear(32, 24).bfloat16().requires_grad_(False)  # 24: not a multiple of 16
    root = torch.nn.Sequential(trained.bfloat16(), frozen, torch.nn.Sequential(odd))
    assert fp8.convert_linears(root) == (1, 2)
    assert type(root[0]) is torch.nn.Linear and type(root[2][0]) is torch.nn.Linear
    layer = root[1]
    assert isinstance(layer, fp8.FP8Linear) and layer.weight.dtype == torch.float8_e4m3fn
    x = torch.randn(5, 32, dtype=torch.bfloat16, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None
    assert not any(p.requires_grad or p.grad is not None for p in layer.parameters())


# ---------------------------------------------------------------------- the tiny Wan with LoRA adapters

@pytest.fixture(scope="module")
def tiny_bf16():
    return VideoModel.from_pretrained("tiny", dtype=torch.bfloat16)


def with_loras(model, fp8_at: str | None):
    """A copy of `model` with a trainable "default" and a frozen "reference" LoRA (random, non-zero B: a fresh
    LoRA adds nothing and would hide a lost adapter); FP8 base weights "before" or "after" the adapters, or none."""
    model = copy.deepcopy(model)
    if fp8_at == "before":
        model.enable_fp8()
    model.add_lora(8, "attention+ffn", name="reference", trainable=False, seed=1)
    model.add_lora(8, "attention+ffn", name="default", seed=2)
    if fp8_at == "after":
        model.enable_fp8()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.lora_parameters("default") + model.lora_parameters("reference"):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


def batch():
    generator = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, 16, 3, 16, 16, generator=generator)
    return x0, torch.randn(x0.shape, generator=generator), torch.tensor([300.0, 700.0]), \
        torch.randn(2, 10, 32, generator=generator).bfloat16()


def prediction_and_lora_grads(model):
    x0, noise, t, text_emb = batch()
    with torch.autocast("cpu", torch.bfloat16):
        pred = model.predict(model.add_noise(x0, noise, t), t, text_emb)
    model.denoising_error(x0, noise, t, text_emb).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.lora_parameters("default")])
    return pred.detach(), grads


def test_fp8_wan_with_lora_follows_bf16_forward_and_lora_gradients(tiny_bf16):
    reference = with_loras(tiny_bf16, fp8_at=None)
    model = with_loras(tiny_bf16, fp8_at="before")
    assert sum(isinstance(m, fp8.FP8Linear) for m in model.transformer.modules()) == 60  # 6 blocks × 10 layers
    pred, grads = prediction_and_lora_grads(model)
    pred_ref, grads_ref = prediction_and_lora_grads(reference)
    # e4m3 rounds each operand by up to 2⁻⁴ (rms ~2.5 %): each layer's output moves ~3.5 %, the network's 3.9 %
    assert (pred - pred_ref).norm() / pred_ref.norm() < 0.06
    assert torch.nn.functional.cosine_similarity(grads, grads_ref, dim=0) > 0.995
    # the LoRAs matter at this size: without them the prediction is far off (so the check above sees a lost adapter)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), reference.adapter(None):
        x0, noise, t, text_emb = batch()
        pred_base = reference.predict(reference.add_noise(x0, noise, t), t, text_emb)
    assert (pred_base - pred_ref).norm() / pred_ref.norm() > 0.5
    trained = [key for key, p in model.transformer.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in key and ".default." in key for key in trained)  # the base got no gradient


def test_fp8_before_or_after_the_adapters_is_the_same_model(tiny_bf16):
    first, after = with_loras(tiny_bf16, fp8_at="before"), with_loras(tiny_bf16, fp8_at="after")
    for model in (first, after):  # LoRA matmuls stay in their own dtypes: trainable fp32, frozen bf16
        assert {p.dtype for p in model.lora_parameters("default")} == {torch.float32}
        assert {p.dtype for p in model.lora_parameters("reference")} == {torch.bfloat16}
    pred_first, grads_first = prediction_and_lora_grads(first)
    pred_after, grads_after = prediction_and_lora_grads(after)
    assert torch.equal(pred_first, pred_after) and torch.equal(grads_first, grads_after)


def test_lora_saved_from_an_fp8_model_holds_adapters_only_and_loads_back(tiny_bf16, tmp_path):
    model = with_loras(tiny_bf16, fp8_at="before")
    model.save_lora(str(tmp_path))
    saved = load_file(tmp_path / LORA_FILE)
    assert saved and all(".lora_A." in key or ".lora_B." in key for key in saved)
    assert {value.dtype for value in saved.values()} == {torch.float32}
    fresh = copy.deepcopy(tiny_bf16)
    fresh.enable_fp8()
    fresh.load_lora(str(tmp_path), name="loaded")
    for original, loaded in zip(model.lora_parameters("default"), fresh.lora_parameters("loaded")):
        assert torch.equal(loaded, original.detach().to(loaded.dtype))


def test_compiled_fp8_block_is_one_graph_forward_and_backward(tiny_bf16):
    model = with_loras(tiny_bf16, fp8_at="before")
    x0, noise, t, text_emb = batch()
    eager = model.denoising_error(x0, noise, t, text_emb)
    # fullgraph: a graph break is an error, not a silent split; one block shows it for all six (the same code)
    model.transformer.blocks[0].compile(fullgraph=True, backend="aot_eager")
    compiled = model.denoising_error(x0, noise, t, text_emb)
    compiled.sum().backward()
    assert torch.allclose(compiled, eager, rtol=1e-2)  # aot_eager decomposes some bf16 ops: rounding differs
    assert all(p.grad is not None for p in model.lora_parameters("default"))


def test_fp8_flag_reaches_the_model_and_the_run_settings():
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args(["--model", "tiny", "--device", "cpu", "--bf16", "--fp8", "--no-compile"])
    model = load_model_from_args(args)
    assert isinstance(model.transformer.blocks[0].ffn.net[2], fp8.FP8Linear)
    assert "fp8" not in OPERATIONAL_FLAGS and run_settings(vars(args), [], "dlib", {})["fp8"] is True
    with pytest.raises(ModelLoadError, match="--bf16"):  # FP8 matmuls write bf16: said before the model loads
        load_model_from_args(parser.parse_args(["--model", "tiny", "--device", "cpu", "--fp8"]))
    plain = load_model_from_args(parser.parse_args(["--model", "tiny", "--device", "cpu", "--bf16", "--no-compile"]))
    assert not any(isinstance(m, fp8.FP8Linear) for m in plain.transformer.modules())
