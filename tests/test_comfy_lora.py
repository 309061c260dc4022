"""comfy_lora.py: a LoRA from model.save_lora becomes a file in ComfyUI's published Wan2.1 LoRA format, and back.

The published format, written out here from its source (ComfyUI's comfy/ldm/wan/model.py layer names,
comfy/lora.py's "diffusion_model.<layer>" keys, comfy/weight_adapter/lora.py's lora_up / lora_down / alpha),
at Wan2.1-T2V-1.3B's layout: 30 blocks, width 1536, feed-forward 8960.
"""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import comfy_lora
import tiny
from model import LORA_FILE, LORA_TARGETS, VideoModel

PUBLISHED_BLOCKS, PUBLISHED_WIDTH, PUBLISHED_FFN = 30, 1536, 8960
# ComfyUI's Wan layer -> (in, out) features of its Linear at the 1.3B size (comfy/ldm/wan/model.py)
PUBLISHED_LAYERS = {
    "self_attn.q": (1536, 1536), "self_attn.k": (1536, 1536), "self_attn.v": (1536, 1536), "self_attn.o": (1536, 1536),
    "cross_attn.q": (1536, 1536), "cross_attn.k": (1536, 1536), "cross_attn.v": (1536, 1536), "cross_attn.o": (1536, 1536),
    "ffn.0": (1536, 8960), "ffn.2": (8960, 1536),
}
ATTENTION_LAYERS = [name for name in PUBLISHED_LAYERS if "attn" in name]
PUBLISHED_KEYS = {f"diffusion_model.blocks.{n}.{layer}.{part}" for n in range(PUBLISHED_BLOCKS) for layer in PUBLISHED_LAYERS
                  for part in ("lora_down.weight", "lora_up.weight", "alpha")}
RANK, ALPHA = 4, 8.0  # α ≠ r, so a lost or misread alpha changes ΔW by 2x


@pytest.fixture(scope="module", params=sorted(LORA_TARGETS))
def saved_lora(request, tmp_path_factory):
    """(targets, folder) of a real LoRA of the tiny Wan model with random, non-zero factors, saved by model.save_lora."""
    model = VideoModel.from_pretrained("tiny")
    model.add_lora(RANK, request.param, alpha=ALPHA)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    folder = tmp_path_factory.mktemp("lora") / "magicid_lora"
    model.save_lora(str(folder))
    return request.param, folder


def test_every_key_is_a_published_comfyui_wan_key(saved_lora, capsys):
    targets, folder = saved_lora
    path = comfy_lora.write_comfy_lora(folder)
    assert path == folder / "magicid_lora_comfy.safetensors"
    printed = capsys.readouterr().out
    assert str(folder / LORA_FILE) in printed and str(path) in printed  # the run's output names both files
    keys = set(load_file(str(path)))
    assert keys <= PUBLISHED_KEYS, sorted(keys - PUBLISHED_KEYS)[:5]
    layers = ATTENTION_LAYERS if targets == "attention" else list(PUBLISHED_LAYERS)
    blocks = len(tiny.build_tiny_pipeline("tiny", pretrained=False).transformer.blocks)
    assert keys == {f"diffusion_model.blocks.{n}.{layer}.{part}" for n in range(blocks) for layer in layers
                    for part in ("lora_down.weight", "lora_up.weight", "alpha")}


def test_a_published_size_lora_fills_the_published_key_list_with_its_shapes():
    """The 30-block 1.3B transformer, built on the meta device (no memory), LoRA on attention + FFN."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    with torch.device("meta"):
        transformer = WanTransformer3DModel(num_attention_heads=12, attention_head_dim=128, ffn_dim=PUBLISHED_FFN,
                                            num_layers=PUBLISHED_BLOCKS, text_dim=4096, cross_attn_norm=True,
                                            qk_norm="rms_norm_across_heads")
        transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(LORA_TARGETS["attention+ffn"])))
    state = {f"transformer.{key}": value for key, value in get_peft_model_state_dict(transformer).items()}
    comfy = comfy_lora.to_comfy(state, ALPHA)
    assert set(comfy) == PUBLISHED_KEYS
    for n in (0, PUBLISHED_BLOCKS - 1):
        for layer, (features_in, features_out) in PUBLISHED_LAYERS.items():
            prefix = f"diffusion_model.blocks.{n}.{layer}"
            assert comfy[f"{prefix}.lora_down.weight"].shape == (RANK, features_in), prefix
            assert comfy[f"{prefix}.lora_up.weight"].shape == (features_out, RANK), prefix
            assert comfy[f"{prefix}.alpha"].item() == ALPHA


def test_weights_round_trip_exactly_and_alpha_survives(saved_lora, tmp_path):
    _, folder = saved_lora
    original = load_file(str(folder / LORA_FILE))
    back_dir = comfy_lora.write_diffusers_lora(comfy_lora.write_comfy_lora(folder), tmp_path / "back").parent
    back = load_file(str(back_dir / LORA_FILE))
    assert back.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    with safe_open(str(back_dir / LORA_FILE), framework="pt") as handle:
        config = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert config["transformer.lora_alpha"] == ALPHA and config["transformer.r"] == RANK


def test_delta_w_is_the_same_from_both_files_in_float64(saved_lora):
    """ΔW = B·A·α/r read the diffusers way (α from peft's metadata) and the ComfyUI way (alpha / down.shape[0])."""
    _, folder = saved_lora
    diffusers_state = load_file(str(folder / LORA_FILE))
    with safe_open(str(folder / LORA_FILE), framework="pt") as handle:
        config = json.loads(handle.metadata()["lora_adapter_metadata"])
    scale = config["transformer.lora_alpha"] / config["transformer.r"]
    comfy = load_file(str(comfy_lora.write_comfy_lora(folder)))
    comfy_layers = {key.removesuffix(".alpha") for key in comfy if key.endswith(".alpha")}
    diffusers_layers = {key.removesuffix(".lora_A.weight") for key in diffusers_state if key.endswith("lora_A.weight")}
    assert len(comfy_layers) == len(diffusers_layers)
    for layer in diffusers_layers:
        block, name = layer.split(".")[2], layer.split(".", 3)[3]
        comfy_layer = f"diffusion_model.blocks.{block}.{comfy_lora.LAYER_NAMES[name]}"
        up, down = comfy[f"{comfy_layer}.lora_up.weight"].double(), comfy[f"{comfy_layer}.lora_down.weight"].double()
        delta_comfy = comfy[f"{comfy_layer}.alpha"].item() / down.shape[0] * (up @ down)
        delta_diffusers = scale * (diffusers_state[f"{layer}.lora_B.weight"].double()
                                   @ diffusers_state[f"{layer}.lora_A.weight"].double())
        assert delta_comfy.abs().max() > 0
        torch.testing.assert_close(delta_comfy, delta_diffusers, rtol=0, atol=1e-12)


def test_diffusers_own_comfyui_reader_gives_the_same_network(saved_lora):
    """diffusers converts ComfyUI Wan LoRAs itself (lora_conversion_utils): the Comfy file must load to the same
    transformer output as the diffusers file — a wrong layer, a swapped up/down or a lost alpha would differ."""
    _, folder = saved_lora
    comfy_file = comfy_lora.write_comfy_lora(folder)
    outputs = []
    for weight_name in (LORA_FILE, comfy_file.name):
        pipe = tiny.build_tiny_pipeline("tiny")
        pipe.load_lora_weights(str(folder), weight_name=weight_name)
        generator = torch.Generator().manual_seed(1)
        x_t = torch.randn(1, 16, 3, 8, 8, generator=generator)
        text = torch.randn(1, 12, tiny.TEXT_DIM, generator=generator)
        with torch.no_grad():
            outputs.append(pipe.transformer(x_t, torch.tensor([500.0]), text, return_dict=False)[0])
    base = tiny.build_tiny_pipeline("tiny").transformer(x_t, torch.tensor([500.0]), text, return_dict=False)[0]
    assert (outputs[0] - base).abs().max() > 1e-3  # the LoRA does change the network
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_the_comfy_file_beside_it_does_not_change_what_load_lora_reads(saved_lora):
    _, folder = saved_lora
    comfy_lora.write_comfy_lora(folder)
    model = VideoModel.from_pretrained("tiny")
    model.load_lora(str(folder), name="default")
    original = load_file(str(folder / LORA_FILE))
    loaded = {key: p for key, p in model.transformer.named_parameters() if ".lora_B.default." in key}
    key = next(iter(loaded))
    stored = original["transformer." + key.replace(".default", "")]
    assert torch.equal(loaded[key].detach().float(), stored)


def test_unknown_layers_are_refused_with_the_key_named():
    with pytest.raises(ValueError, match="proj_out"):
        comfy_lora.to_comfy({"transformer.proj_out.lora_A.weight": torch.zeros(4, 8)}, 4.0)
