"""tiny.py — the offline presets: real diffusers video pipelines at a size a laptop CPU trains in minutes.

`--model tiny` is Wan2.1's own classes (WanTransformer3DModel, AutoencoderKLWan, a UMT5 text encoder,
the UniPC flow-matching scheduler) built from small configs, and `--model tiny-cogvideox` is the same
for CogVideoX. `tiny-wan2.2-5b` and `tiny-wan2.2-14b` are Wan2.2's two shapes (tests/test_wan22.py): a
48-channel VAE with 16× spatial compression and per-token timesteps (TI2V-5B), and two experts switched at a
timestep boundary (T2V-A14B). Nothing is downloaded: the tokenizer is a byte-level one built here (every UTF-8 byte is a
token, so any prompt encodes), and all weights are drawn from a fixed seed, so the preset is the same
on every machine. If pretrained tiny weights exist (TINY_WEIGHTS_DIR/<preset>/*.safetensors), they are
loaded over the random ones: weights/tiny/ ships the toy world's (toyworld/pretrain.py, toyworld/README.md),
a base that has learned camera motion on face-free videos, so `--model tiny` has motion to lose.
`--model tiny-toyworld` is the population base (issue 26, toyworld/README.md): a wider transformer on tiny's VAE,
pretrained on toyworld/identities.py's people (weights/tiny-toyworld/, once pretrained on a GPU).

Measured on a 2-core CPU: the Wan VAE below encodes 9 frames of 128×128 in about 0.16 s and decodes
them in about 0.3 s; the ~1.75 M-parameter transformer's forward+backward on that latent is a few
hundredths of a second. The training loop still caches latents and keeps the VAE off the hot path.

Exports: TINY_PRESETS, build_tiny_pipeline(name), byte_tokenizer, load_pretrained_weights.
"""

from __future__ import annotations

import os

import torch

TINY_PRESETS = ("tiny", "tiny-cogvideox", "tiny-toyworld", "tiny-wan2.2-5b", "tiny-wan2.2-14b")
TINY_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
TEXT_DIM = 32  # width of the tiny text encoder; the transformer's cross-attention reads this


def build_tiny_pipeline(name: str = "tiny", seed: int = 0, pretrained: bool = True):
    """A complete diffusers pipeline with small, seeded weights (pretrained ones when shipped, unless
    pretrained=False: toyworld/pretrain.py starts from the seeded ones)."""
    if name not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset {name!r}; choose one of {TINY_PRESETS}")
    tokenizer = byte_tokenizer()
    # The seeded initialisation draws from the global RNG; fork it, so that loading a model never moves
    # the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        build = {"tiny": _build_tiny_wan, "tiny-toyworld": _build_tiny_toyworld, "tiny-cogvideox": _build_tiny_cogvideox,
                 "tiny-wan2.2-5b": _build_tiny_wan22_5b, "tiny-wan2.2-14b": _build_tiny_wan22_14b}[name]
        pipe = build(tokenizer, seed)
    if pretrained:
        if name == "tiny-toyworld":  # the population base (toyworld/identities.py) shares tiny's VAE
            if not os.path.isfile(os.path.join(TINY_WEIGHTS_DIR, name, "transformer.safetensors")):
                # random weights would run and mean nothing: say so instead
                raise FileNotFoundError("--model tiny-toyworld has no pretrained weights in weights/tiny-toyworld/ yet: "
                                        "pretrain them on a GPU first (toyworld/README.md, 'Issue 26')")
            load_pretrained_weights(pipe, os.path.join(TINY_WEIGHTS_DIR, "tiny"), components=("vae",))
        load_pretrained_weights(pipe, os.path.join(TINY_WEIGHTS_DIR, name))
    return pipe


def byte_tokenizer():
    """A T5-style tokenizer over raw UTF-8 bytes: ids 0 <pad>, 1 </s>, 2 <unk>, then 256 byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "</s>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for the bytes
    vocab = {token: i for i, token in enumerate(special + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def _build_tiny_wan(tokenizer, seed: int, with_vae: bool = True, width: str = "tiny"):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1))
    transformer = _tiny_wan_transformer(seed + 1, width=width)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=3.0, num_train_timesteps=1000)
    if not with_vae:  # Wan2.2-5B brings its own
        return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=None, scheduler=scheduler,
                           transformer=transformer)
    torch.manual_seed(seed + 2)
    # Same 8× spatial / 4× temporal compression and 16 latent channels as Wan2.1's VAE, built the way
    # Wan2.2's is: 2×2 pixels patchified into 12 channels, then two residual down/up stages (4× each
    # way, average-pool / duplicate shortcuts), widths 32, 64, 64: ~2.7 M parameters. It works at half
    # resolution from its first layer, so on a CPU it is ~3× faster than the plain layout at base_dim 16.
    vae = AutoencoderKLWan(base_dim=32, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1,
                           temperal_downsample=[True, True], is_residual=True, patch_size=2,
                           in_channels=12, out_channels=12, scale_factor_spatial=8, scale_factor_temporal=4)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)


def _build_tiny_toyworld(tokenizer, seed: int):
    return _build_tiny_wan(tokenizer, seed, width="toyworld")


def _tiny_wan_transformer(seed: int, channels: int = 16, width: str = "tiny"):
    """tiny: hidden = 4 heads × 32 = 128; 6 blocks of self-attn, cross-attn and FFN (512): ~1.75 M parameters.
    toyworld: 4 heads × 64 = 256, 3 blocks, FFN 9216: 16.4 M parameters, so that a rank-64 LoRA on the attention
    layers is 4.8 % of them (Wan2.1-1.3B: 3.6 %) and rank 64 is a quarter of the width, not half."""
    from diffusers import WanTransformer3DModel

    shape = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=9216, num_layers=3) if width == "toyworld" \
        else dict(num_attention_heads=4, attention_head_dim=32, ffn_dim=512, num_layers=6)
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), in_channels=channels, out_channels=channels, text_dim=TEXT_DIM, freq_dim=64,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64, **shape)


def _build_tiny_wan22_5b(tokenizer, seed: int):
    """Wan2.2-TI2V-5B's shape: a VAE with 48 latent channels and 16× spatial / 4× temporal compression (2×2
    patchify, then three down stages of which the last two also halve time), its own per-channel latents_mean/std,
    a 48-channel transformer, and expand_timesteps=True (one timestep per token, as the published pipeline runs)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    pipe = _build_tiny_wan(tokenizer, seed, with_vae=False)
    transformer = _tiny_wan_transformer(seed + 1, channels=48)
    torch.manual_seed(seed + 3)
    # Statistics away from (0, 1), so a test sees whether the model standardises with these and not Wan2.1's.
    mean, std = (torch.randn(48) * 0.3).tolist(), (torch.rand(48) + 0.5).tolist()
    vae = AutoencoderKLWan(base_dim=16, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12,
                           out_channels=12, scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=mean,
                           latents_std=std)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=5.0, num_train_timesteps=1000)  # the 5B's published shift
    return WanPipeline(tokenizer=tokenizer, text_encoder=pipe.text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer, expand_timesteps=True)


def _build_tiny_wan22_14b(tokenizer, seed: int):
    """Wan2.2-T2V-A14B's shape: two transformers of one architecture, `transformer` for the high-noise steps
    (t >= 0.875 · 1000) and `transformer_2` for the rest, each with its own weights, and Wan2.1's 16-channel VAE."""
    from diffusers import WanPipeline

    pipe = _build_tiny_wan(tokenizer, seed)
    transformer_2 = _tiny_wan_transformer(seed + 11)  # another seed: two different experts
    return WanPipeline(tokenizer=tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, scheduler=pipe.scheduler,
                       transformer=pipe.transformer, transformer_2=transformer_2, boundary_ratio=0.875)


def _build_tiny_cogvideox(tokenizer, seed: int):
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1))
    torch.manual_seed(seed + 1)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=64,
        text_embed_dim=TEXT_DIM, num_layers=2, sample_width=16, sample_height=16, sample_frames=9,
        patch_size=2, temporal_compression_ratio=4, max_text_seq_length=64, use_rotary_positional_embeddings=True)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2, layers_per_block=1,
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), temporal_compression_ratio=4)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", snr_shift_scale=3.0,
                                       timestep_spacing="trailing", rescale_betas_zero_snr=True)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                             transformer=transformer)


def load_pretrained_weights(pipe, weights_dir: str, components=("transformer", "vae", "text_encoder")) -> None:
    """Overwrite the random weights with shipped pretrained ones, component by component, if present
    (bf16 files are cast to the module's dtype)."""
    from safetensors.torch import load_file

    for component in components:
        path = os.path.join(weights_dir, f"{component}.safetensors")
        if os.path.isfile(path):
            getattr(pipe, component).load_state_dict(load_file(path), strict=True)
