"""model.py — one wrapper around a diffusers text-to-video model.

MagicID needs five things from a video diffusion backbone, and every backbone spells them differently:

    latents    x_0 = normalize(VAE.encode(video))                 latents: [B, C, F, H, W]
    noising    x_t = add_noise(x_0, ε, t)                          flow (Wan):  x_t = (1 − σ)·x_0 + σ·ε,  σ = t/1000
                                                                   DDPM (CogVideoX): x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε
    target     y   = target(x_0, ε, t)                             flow: v = ε − x_0;  v-pred: √ᾱ_t·ε − √(1 − ᾱ_t)·x_0
    prediction ŷ   = f_θ(x_t, t, c)                                the transformer, with or without LoRA adapters
    error      e   = mean ‖y − ŷ‖² per video                        denoising_error: every stage's objective
    sampling   video = decode(ODE/SDE solve from noise, c)         the stock pipeline (fast mode: fast_sampling.py)

`VideoModel` hides those quirks (latent scaling, layouts, timestep conventions, objectives) so that
dpo.py, sampling.py and train.py never ask which backbone runs. It also owns the LoRA adapters
(lora.py): the trainable one ("default"), a frozen copy that plays the DPO reference, and `adapter(...)`
to run the network with any one of them (or none) active without copying a single weight.

Backbones: Wan2.1-T2V 1.3B (default) and 14B, Wan2.2 TI2V-5B and T2V-A14B (its two experts, picked by the
timestep, and the 5B's per-token timesteps: experts.py), CogVideoX 2B/5B, and offline presets built from tiny
configs of the same classes: "tiny" (Wan), "tiny-cogvideox", "tiny-wan2.2-5b", "tiny-wan2.2-14b" (see tiny.py).

Exports: VideoModel, ModelLoadError; MODEL_PRESETS, DEFAULTS, VideoDefaults (from backbones.py).
"""

from __future__ import annotations

import numpy as np
import torch

from backbones import DEFAULTS, MODEL_PRESETS, VideoDefaults, load_pipeline, name_to_record  # noqa: F401 (re-exported)
from experts import WanExperts, split_expert_choice
from lora import LORA_FILE, LORA_TARGETS, LoraAdapters, ModelLoadError  # noqa: F401  (re-exported)
from speedups import SpeedSwitches


class VideoModel(LoraAdapters, WanExperts, SpeedSwitches):
    """A text-to-video pipeline seen through the five operations above, plus LoRA adapters."""

    def __init__(self, pipe, family: str, defaults: VideoDefaults, name: str,
                 trained_experts: tuple[int, ...] | None = None):
        self.pipe = pipe
        self.family = family  # "wan" | "cogvideox": the only place the backbone is named
        self.defaults = defaults
        self.name = name
        self.base_model = name_to_record(name)  # what a saved LoRA's magicid.json names (lora.py)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        # Read once: the transformer stays where from_pretrained put it, and diffusers' ModelMixin.device and
        # .dtype walk every submodule on each access (looking for offloading hooks): ~10 ms apiece on Wan2.1-1.3B,
        # ~15 accesses a DPO step, all host time at the start of the step while the GPU waits (bench/NOTES.md).
        self.device: torch.device = pipe.transformer.device
        self.dtype: torch.dtype = pipe.transformer.dtype  # the compute dtype; FP8 weights (fp8.py) do not change it
        self.objective = "flow" if family == "wan" else pipe.scheduler.config.prediction_type
        if self.objective == "v_prediction":
            self.objective = "v"
        elif self.objective == "epsilon":
            self.objective = "eps"
        self._init_experts(pipe, trained_experts)  # experts.py: self.transformers, the boundary, their placement
        self._init_adapters()
        self._rotary_cache: dict = {}
        self.low_memory = False                          # enable_low_memory
        self.offload = None                              # enable_speedups(offload_blocks=...): offload.py
        self._prompt_cache: dict[str, torch.Tensor] = {}  # text -> [L, D]: encode_prompt, cache_prompts
        for module in (*self.transformers, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
            module.eval()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                        vae_dtype: torch.dtype | None = None, low_memory: bool = False) -> "VideoModel":
        """Load a backbone by preset name ("wan-1.3b", "tiny", ...), hub id, or local diffusers folder.

        Only safetensors weights are read and no remote code runs. The VAE stays in `vae_dtype`
        (default float32: Wan's VAE loses detail in bf16) while the transformer and text encoder use `dtype`.
        low_memory: see enable_low_memory; the text encoder then never moves to `device` here.
        A name ending in ":high" or ":low" (Wan2.2-A14B) trains that expert only (experts.py).
        """
        full_name, name_or_path, trained_experts = name_or_path, *split_expert_choice(name_or_path)
        pipe, family, defaults = load_pipeline(name_or_path, dtype, vae_dtype or torch.float32)
        second_expert = getattr(pipe, "transformer_2", None)
        if low_memory or second_expert is not None:  # low memory: the text encoder stays on the CPU
            for module in (pipe.transformer, pipe.vae, *(() if low_memory else (pipe.text_encoder,))):
                module.to(device)                      # the second expert waits on the host (experts.py)
        else:
            pipe.to(device)
        for module, wanted in ((pipe.transformer, dtype), (second_expert, dtype), (pipe.text_encoder, dtype),
                               (pipe.vae, vae_dtype or torch.float32)):
            if module is None:
                continue
            if module.dtype != wanted:  # from_pretrained already loaded most in `dtype`
                module.to(wanted)
        pipe.set_progress_bar_config(disable=True)
        model = cls(pipe, family, defaults, full_name, trained_experts)
        if low_memory:
            model.enable_low_memory()
        return model

    @property
    def blocks(self) -> torch.nn.ModuleList:
        """The transformer's blocks, whatever the backbone calls them (Wan: blocks, CogVideoX: transformer_blocks)."""
        return getattr(self.transformer, "blocks", None) or self.transformer.transformer_blocks

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU tensor (a draw, a cached latent) onto the model's device without stopping the host.

        A plain .to("cuda") of ordinary (pageable) memory waits until the GPU has finished everything queued
        before it; once per training step that drains the queue, and the GPU idles while the host prepares the
        next step (adapter switches, kernel launches: ~0.1 s a DPO step on an H100, bench/NOTES.md). From pinned
        memory the copy is queued behind that work instead, and torch keeps the pinned buffer until it is done.
        """
        if self.device.type != "cuda" or tensor.device.type != "cpu":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ text and video <-> latents

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """texts -> text_emb: [B, L, D], the transformer's cross-attention context.

        Each text is encoded once and kept ([L, D] each; Wan: 4 MiB in bf16): a training step or a sampling
        call with a prompt seen before never runs the text encoder (low memory: it never leaves the CPU)."""
        self.cache_prompts(texts)
        return torch.stack([self._prompt_cache[text] for text in texts])

    @torch.no_grad()
    def _run_text_encoder(self, texts: list[str]) -> torch.Tensor:
        text_emb, _ = self.pipe.encode_prompt(
            prompt=list(texts), do_classifier_free_guidance=False,
            max_sequence_length=self.defaults.max_text_tokens, device=self.device)
        return text_emb.to(self.dtype)

    @torch.no_grad()
    def encode_video(self, videos) -> torch.Tensor:
        """videos: uint8 [B, F, H, W, 3] -> latents: [B, C, f, h, w] in the space the transformer denoises.

        We take the posterior mean, not a sample: cached latents are then a pure function of the video.
        """
        videos = torch.as_tensor(np.asarray(videos))
        _check_video_shape(videos.shape, self.family, self.size_multiple)
        pixels = videos.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)  # [B, 3, F, H, W] in [-1, 1]
        latents = []
        for clip in pixels:  # one video at a time: the VAE's activations dominate memory
            posterior = self.vae.encode(clip[None].to(self.device, self.vae.dtype)).latent_dist
            latents.append(posterior.mode().float())
        return self.normalize_latents(torch.cat(latents))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """latents: [B, C, f, h, w] -> videos: uint8 numpy [B, F, H, W, 3]."""
        videos = []
        for z in self.denormalize_latents(latents.float()):
            pixels = self.vae.decode(z[None].to(self.device, self.vae.dtype)).sample  # [1, 3, F, H, W]
            pixels = pixels[0].float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
            videos.append(pixels.permute(1, 2, 3, 0).cpu().numpy())  # [F, H, W, 3]
        return np.stack(videos)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        if self.family == "wan":  # per-channel standardisation with the VAE's published statistics
            mean = torch.tensor(config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
            std = torch.tensor(config.latents_std, device=z.device).view(1, -1, 1, 1, 1)
            return (z - mean) / std
        return z * config.scaling_factor

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        if self.family == "wan":
            mean = torch.tensor(config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
            std = torch.tensor(config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
            return latents * std + mean
        return latents / config.scaling_factor

    # ------------------------------------------------------------------ the training objective

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps t: [n] in [0, 1000).

        Flow matching: u ~ U(0, 1) pushed through the sampler's own shift σ = s·u / (1 + (s − 1)·u), so
        training spends its steps at the noise levels sampling visits. DDPM: t uniform over 0..999.
        """
        if self.objective == "flow":
            u = torch.rand(n, generator=generator, device="cpu")
            if (u_range := self._training_range()) is not None:  # one Wan2.2 expert trains: its timesteps only
                u = u_range[0] + (u_range[1] - u_range[0]) * u
            shift = float(self.pipe.scheduler.config.get("flow_shift") or self.pipe.scheduler.config.get("shift") or 1.0)
            sigma = shift * u / (1 + (shift - 1) * u)
            t = (sigma * 1000).clamp(max=999.0)
            return self.to_device(t if u_range is None else self._clamp_to_trained_expert(t))
        steps = self.pipe.scheduler.config.num_train_timesteps
        return self.to_device(torch.randint(0, steps, (n,), generator=generator, device="cpu").float())

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean latents x0 [B, ...], noise ε like x0, timesteps t [B]."""
        if self.objective == "flow":
            sigma = _per_sample(t.float() / 1000, x0)
            return (1 - sigma) * x0 + sigma * noise
        alpha_bar = _per_sample(self._alphas_cumprod(t), x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses at (x_t, t): flow v = ε − x0, v-pred, or ε."""
        if self.objective == "flow":
            return noise - x0
        if self.objective == "eps":
            return noise
        alpha_bar = _per_sample(self._alphas_cumprod(t), x0)
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0

    def denoising_error(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """e = mean ‖target(x0, ε, t) − f_θ(x_t, t, c)‖² per sample: x0, noise [B, C, F, H, W], t [B] -> e [B] (fp32).

        The training objective of every stage, written once: the identity stage minimizes it, Diffusion-DPO
        compares it between policy and reference (dpo.py), the SFT term adds it on winners. A bf16 model
        runs under autocast, so fp32 LoRA weights meet bf16 activations; the error itself is fp32.
        """
        x_t = self.add_noise(x0, noise, t)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            pred = self.predict(x_t, t, text_emb)                                  # [B, C, F, H, W]
        return (pred.float() - self.target(x0, noise, t)).pow(2).flatten(1).mean(1)

    def _alphas_cumprod(self, t: torch.Tensor) -> torch.Tensor:
        alphas_cumprod = self.pipe.scheduler.alphas_cumprod.to(t.device, torch.float32)
        return alphas_cumprod[t.long()]

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """f_θ(x_t, t, c): x_t [B, C, F, H, W], t [B], text_emb [B, L, D] -> prediction [B, C, F, H, W] (fp32)."""
        if self.family == "wan":  # the expert of each row's t, per-token timesteps where the model wants them
            return self._wan_forward(x_t, t, text_emb)
        # CogVideoX wants [B, F, C, H, W], integer timesteps, and (5B) rotary embeddings for this grid.
        hidden = x_t.permute(0, 2, 1, 3, 4).to(self.dtype)
        out = self.transformer(hidden_states=hidden, timestep=t.long(), encoder_hidden_states=text_emb,
                               image_rotary_emb=self._rotary(x_t.shape), return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4).float()

    def _rotary(self, latent_shape):
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None
        _, _, frames, h, w = latent_shape
        key = (frames, h, w)
        if key not in self._rotary_cache:
            scale = self.pipe.vae_scale_factor_spatial
            self._rotary_cache[key] = self.pipe._prepare_rotary_positional_embeddings(
                h * scale, w * scale, frames, self.device)
        return self._rotary_cache[key]

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, prompts: list[str], frames: int | None = None, height: int | None = None,
               width: int | None = None, steps: int | None = None, guidance: float | None = None,
               seed: int | list[int] = 0, negative_prompt: str = "", cfg_interval: int = 1, cache=None,
               progress: bool = False):
        """Generate one video per prompt with the active adapters.

        `seed` is one int (video i uses seed + i) or one seed per prompt; the same seed gives the
        same video on the same device. cfg_interval = 1 runs the stock diffusers pipeline (exact);
        k > 1 or a `cache` hook ("first-block:0.05", see fast_sampling.cache_config) is fast_sampling.py's
        lossy fast mode (flow-matching backbones only). Returns (videos uint8 [B, F, H, W, 3], latents [B, C, f, h, w] on the CPU).
        """
        d = self.defaults
        frames, height, width = frames or d.frames, height or d.height, width or d.width
        steps, guidance = steps or d.steps, d.guidance if guidance is None else guidance
        _check_video_shape((len(prompts), frames, height, width, 3), self.family, self.size_multiple)
        noise = self.initial_noise(seed, len(prompts), frames, height, width)  # [B, C, f, h, w]
        text_emb = self.encode_prompt(prompts)                                  # [B, L, D]
        if cfg_interval > 1 or cache is not None:
            import fast_sampling

            latents = fast_sampling.sample_latents(self, text_emb, self.encode_prompt([negative_prompt]), noise,
                                                   steps, guidance, cfg_interval, cache)
        else:
            latents = self._pipeline_latents(text_emb, self.encode_prompt([negative_prompt] * len(prompts)), noise,
                                             frames, height, width, steps, guidance, progress)
        return self.decode(latents), latents.cpu()

    def initial_noise(self, seed: int | list[int], count: int, frames: int, height: int, width: int) -> torch.Tensor:
        """ε for `count` videos: [B, C, f, h, w], one CPU generator per seed, so a seed means the same video on
        every device and whatever the batch it is drawn in."""
        seeds = [seed + i for i in range(count)] if isinstance(seed, int) else list(seed)
        if len(seeds) != count:
            raise ValueError(f"got {len(seeds)} seeds for {count} prompts")
        shape = self.latent_shape(frames, height, width)
        return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])

    def _pipeline_latents(self, text_emb, negative_emb, noise, frames, height, width, steps, guidance, progress):
        """The stock diffusers pipeline from `noise` [B, C, f, h, w] to clean latents [B, C, f, h, w] (fp32)."""
        if self.family == "cogvideox":
            noise = noise.permute(0, 2, 1, 3, 4)  # the pipeline's own layout [B, f, C, h, w]
        self.pipe.set_progress_bar_config(disable=not progress)
        latents = self.pipe(
            prompt_embeds=text_emb, negative_prompt_embeds=negative_emb, num_frames=frames, height=height,
            width=width, num_inference_steps=steps, guidance_scale=guidance,
            **({"guidance_scale_2": self.defaults.guidance_2} if self.boundary is not None else {}),
            latents=noise.to(self.device, torch.float32), output_type="latent", return_dict=False)[0]
        if self.family == "cogvideox":
            latents = latents.permute(0, 2, 1, 3, 4)
        return latents.float()

    def check_video_size(self, frames: int | None, height: int | None, width: int | None) -> None:
        """Raise ValueError unless the VAE can take this size (None: the model's default)."""
        d = self.defaults
        _check_video_shape((1, frames or d.frames, height or d.height, width or d.width, 3), self.family,
                           self.size_multiple)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        channels = self.transformer.config.in_channels
        spatial, temporal = self.pipe.vae_scale_factor_spatial, self.pipe.vae_scale_factor_temporal
        return channels, (frames - 1) // temporal + 1, height // spatial, width // spatial

def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, ...] broadcastable against `like`, in its dtype and device."""
    return values.to(like.device, like.dtype).view(-1, *[1] * (like.dim() - 1))


def _check_video_shape(shape, family: str, multiple: int = 16) -> None:
    batch, frames, height, width, channels = shape
    if channels != 3:
        raise ValueError(f"videos must be RGB [B, F, H, W, 3], got shape {tuple(shape)}")
    if (frames - 1) % 4:
        raise ValueError(f"{family} videos need 4k+1 frames (e.g. 9, 33, 49, 81), got {frames}")
    if height % multiple or width % multiple:
        raise ValueError(f"height and width must be multiples of {multiple} for this model, got {height}x{width}")
