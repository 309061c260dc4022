"""comfy_lora.py — the trained Wan LoRA in the file format ComfyUI's Wan loader reads.

A LoRA is the same thing in every tool — for each adapted linear layer with weight W: [out, in],

    W' = W + ΔW,    ΔW = B · A · α / r        A: [r, in] ("down"),  B: [out, r] ("up"),  r = rank, α = alpha

— but diffusers/peft and ComfyUI name the layers and the factors differently, and a LoRA whose keys a
loader does not recognise is ignored (ComfyUI logs "lora key not loaded" and the video shows no person).
model.save_lora writes the diffusers form, with α in the file's metadata; this file writes the same
tensors under ComfyUI's names, with α as a scalar tensor per layer, and reads them back.

| diffusers (`pytorch_lora_weights.safetensors`)     | ComfyUI (`<folder>_comfy.safetensors`)                  |
| -------------------------------------------------- | ------------------------------------------------------- |
| transformer.blocks.N.attn1.to_q / to_k / to_v      | diffusion_model.blocks.N.self_attn.q / k / v            |
| transformer.blocks.N.attn1.to_out.0                | diffusion_model.blocks.N.self_attn.o                    |
| transformer.blocks.N.attn2.to_q / to_k / to_v      | diffusion_model.blocks.N.cross_attn.q / k / v           |
| transformer.blocks.N.attn2.to_out.0                | diffusion_model.blocks.N.cross_attn.o                   |
| transformer.blocks.N.ffn.net.0.proj / ffn.net.2    | diffusion_model.blocks.N.ffn.0 / ffn.2                  |
| <layer>.lora_A.weight  [r, in]                     | <layer>.lora_down.weight  [r, in]   (same tensor)       |
| <layer>.lora_B.weight  [out, r]                    | <layer>.lora_up.weight  [out, r]    (same tensor)       |
| metadata "transformer.lora_alpha" (one α, all layers) | <layer>.alpha  (scalar tensor, α)                     |

Source of the ComfyUI format (github.com/Comfy-Org/ComfyUI, read 2026-11-24): comfy/ldm/wan/model.py
names Wan's layers (blocks.N.self_attn.{q,k,v,o}, blocks.N.cross_attn.{q,k,v,o}, blocks.N.ffn.{0,2});
comfy/lora.py, model_lora_keys_unet, maps a LoRA key "diffusion_model.<layer>" to the weight
"diffusion_model.<layer>.weight" for every model ("generic lora format"); comfy/weight_adapter/lora.py
reads "<key>.lora_up.weight", "<key>.lora_down.weight" and "<key>.alpha" and adds
alpha / lora_down.shape[0] · lora_up @ lora_down. diffusers reads the same format
(diffusers/loaders/lora_conversion_utils.py, _convert_non_diffusers_wan_lora_to_diffusers, which folds
α / r into the factors), so tests/test_comfy_lora.py can check the file with a loader we did not write.

    python comfy_lora.py runs/me/magicid_lora        # writes runs/me/magicid_lora/magicid_lora_comfy.safetensors

Wan2.2-A14B (two experts, one LoRA each) gets two files, named as its users load them in ComfyUI (one
LoraLoaderModelOnly per expert model): magicid_lora_comfy_high_noise.safetensors and ..._low_noise.safetensors.
The key names are Wan2.1's: the A14B's experts are Wan2.1-14B's architecture (40 blocks, 5120 wide).

Exports: write_comfy_lora, write_diffusers_lora, to_comfy, from_comfy, comfy_path.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

# Wan's layers inside one block: diffusers' module path -> ComfyUI's (comfy/ldm/wan/model.py).
LAYER_NAMES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v", "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
FACTOR_NAMES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # model.LORA_FILE: the name diffusers' load_lora_weights reads
DIFFUSERS_FILE_LOW_NOISE = "pytorch_lora_weights_low_noise.safetensors"  # lora.LORA_FILE_LOW_NOISE (transformer_2)
DIFFUSERS_KEY = re.compile(r"^transformer\.blocks\.(\d+)\.(.+)\.(lora_[AB]\.weight)$")
COMFY_KEY = re.compile(r"^diffusion_model\.blocks\.(\d+)\.(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def comfy_path(lora_dir: str | Path, expert: str = "") -> Path:
    """Where the ComfyUI file of a LoRA folder goes: runs/me/magicid_lora -> .../magicid_lora_comfy.safetensors,
    or with expert "high_noise" / "low_noise" (Wan2.2-A14B) .../magicid_lora_comfy_high_noise.safetensors."""
    lora_dir = Path(lora_dir)
    return lora_dir / f"{lora_dir.name}_comfy{'_' + expert if expert else ''}.safetensors"


def write_comfy_lora(lora_dir: str | Path) -> Path | list[Path]:
    """Write the ComfyUI file next to the diffusers one in `lora_dir`; print both paths; return the new one.
    A two-expert folder (DIFFUSERS_FILE_LOW_NOISE beside DIFFUSERS_FILE) gets one file per expert: returns both."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = Path(lora_dir) / DIFFUSERS_FILE
    if not source.is_file():
        raise FileNotFoundError(f"no diffusers LoRA at {source}: pass a folder written by train.py or model.save_lora")
    two_experts = (Path(lora_dir) / DIFFUSERS_FILE_LOW_NOISE).is_file()
    jobs = [(source, comfy_path(lora_dir, "high_noise" if two_experts else ""))]
    if two_experts:
        jobs.append((Path(lora_dir) / DIFFUSERS_FILE_LOW_NOISE, comfy_path(lora_dir, "low_noise")))
    for diffusers_file, target in jobs:
        with safe_open(str(diffusers_file), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
        save_file(to_comfy(state, lora_alpha(metadata, state)), str(target), metadata={"format": "pt"})
        print(f"LoRA (diffusers, WanPipeline.load_lora_weights): {diffusers_file}\n"
              f"LoRA (ComfyUI, LoraLoaderModelOnly): {target}")
    return [target for _, target in jobs] if two_experts else jobs[0][1]


def write_diffusers_lora(comfy_file: str | Path, lora_dir: str | Path) -> Path:
    """The inverse: a ComfyUI Wan LoRA file -> a diffusers LoRA folder that model.load_lora reads."""
    from diffusers import WanPipeline
    from safetensors.torch import load_file

    state, alpha = from_comfy(load_file(str(comfy_file)))
    ranks = {value.shape[0] for key, value in state.items() if key.endswith("lora_A.weight")}
    layers = sorted({key.split(".lora_")[0].split(".", 3)[-1] for key in state})  # "attn1.to_q", ...
    metadata = {"r": ranks.pop(), "lora_alpha": alpha, "target_modules": layers}
    blocks_state = {key.removeprefix("transformer."): value for key, value in state.items()}
    WanPipeline.save_lora_weights(str(lora_dir), transformer_lora_layers=blocks_state,
                                  transformer_lora_adapter_metadata=metadata, safe_serialization=True)
    return Path(lora_dir) / DIFFUSERS_FILE


def to_comfy(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """diffusers keys -> ComfyUI keys, tensors unchanged, plus one `alpha` scalar per layer."""
    out = {}
    for key, value in state.items():
        match = DIFFUSERS_KEY.match(key)
        if match is None or match.group(2) not in LAYER_NAMES:
            raise ValueError(f"LoRA key {key!r} is not a Wan block layer ComfyUI knows "
                             f"({', '.join(LAYER_NAMES)}): this exporter handles Wan2.1 transformer-block LoRAs only")
        block, layer, factor = match.groups()
        comfy_layer = f"diffusion_model.blocks.{block}.{LAYER_NAMES[layer]}"
        out[f"{comfy_layer}.{FACTOR_NAMES[factor]}"] = value
        out[f"{comfy_layer}.alpha"] = torch.tensor(float(alpha))
    return out


def from_comfy(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
    """ComfyUI keys -> (diffusers keys, α). One α and one rank for every layer, as peft's config holds."""
    diffusers_layer = {comfy: diffusers for diffusers, comfy in LAYER_NAMES.items()}
    diffusers_factor = {comfy: diffusers for diffusers, comfy in FACTOR_NAMES.items()}
    out, alphas, ranks = {}, set(), set()
    for key, value in state.items():
        match = COMFY_KEY.match(key)
        if match is None or match.group(2) not in diffusers_layer:
            raise ValueError(f"LoRA key {key!r} is not a ComfyUI Wan block layer (diffusion_model.blocks.N.<layer>)")
        block, layer, part = match.groups()
        if part == "alpha":
            alphas.add(float(value))
            continue
        if part == "lora_down.weight":
            ranks.add(value.shape[0])
        out[f"transformer.blocks.{block}.{diffusers_layer[layer]}.{diffusers_factor[part]}"] = value
    if len(ranks) != 1 or len(alphas) > 1:
        raise ValueError(f"this LoRA mixes ranks {sorted(ranks)} or alphas {sorted(alphas)} across layers; "
                         "a diffusers LoRA config holds one of each")
    rank = ranks.pop()
    return out, alphas.pop() if alphas else float(rank)  # no alpha key: ComfyUI scales by 1, i.e. α = r


def lora_alpha(metadata: dict[str, str], state: dict[str, torch.Tensor]) -> float:
    """α of a diffusers LoRA file, from the peft config diffusers stores in its metadata.

    Without that metadata diffusers loads the LoRA unscaled (α = r), so that is what we export.
    """
    config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    config = {key.removeprefix("transformer."): value for key, value in config.items()}
    if config.get("alpha_pattern") or config.get("rank_pattern") or config.get("use_rslora") or config.get("use_dora"):
        raise ValueError("per-layer alphas/ranks, rsLoRA and DoRA have no plain lora_up/lora_down/alpha form; "
                         "export a LoRA trained with one rank and one alpha")
    if "lora_alpha" in config:
        return float(config["lora_alpha"])
    return float(next(value.shape[0] for key, value in state.items() if key.endswith("lora_A.weight")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lora_dir", help="a LoRA folder written by train.py (holds pytorch_lora_weights.safetensors)")
    write_comfy_lora(parser.parse_args().lora_dir)
