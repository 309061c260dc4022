"""model.py: the tiny presets are real diffusers pipelines, and the wrapper's math is the schedulers' own."""

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler, WanPipeline

import tiny
from model import ModelLoadError, VideoModel


@pytest.fixture(scope="module")
def wan():
    return VideoModel.from_pretrained("tiny")


def random_lora(model: VideoModel, name: str, seed: int, rank: int = 4, targets: str = "attention"):
    """A LoRA whose B is not zero, so it changes the output (peft initialises B = 0)."""
    model.add_lora(rank, targets, name=name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.lora_parameters(name):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def noisy_inputs(model: VideoModel, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (2, *model.latent_shape(9, 64, 64))
    x_t = torch.randn(shape, generator=generator)
    t = torch.tensor([250.0, 800.0])
    text_emb = model.encode_prompt(["a person walking", "a dog running"])
    return x_t, t, text_emb


def test_tiny_preset_is_deterministic_and_offline():
    first, second = tiny.build_tiny_pipeline("tiny"), tiny.build_tiny_pipeline("tiny")
    assert isinstance(first, WanPipeline)
    for (name, a), (_, b) in zip(first.transformer.state_dict().items(), second.transformer.state_dict().items()):
        assert torch.equal(a, b), name
    ids = first.tokenizer(["héllo"]).input_ids[0]
    assert ids[-1] == first.tokenizer.eos_token_id and len(ids) == len("héllo".encode()) + 1  # bytes + </s>


def test_encode_decode_round_trip_shapes(wan):
    videos = np.random.default_rng(0).integers(0, 256, (2, 9, 64, 96, 3), dtype=np.uint8)
    latents = wan.encode_video(videos)
    assert latents.shape == (2, 16, 3, 8, 12)  # 4x temporal (4k+1 -> k+1), 8x spatial compression
    decoded = wan.decode(latents)
    assert decoded.shape == videos.shape and decoded.dtype == np.uint8


def test_encode_decode_reconstructs_a_video_through_standardised_latents(wan):
    # The shipped toy-world VAE on a panning photo it was trained on: the round trip must give the video back
    # (the latents' normalisation undone exactly), and the latents the transformer sees must be standardised.
    photo = cv2.resize(skimage.data.coffee(), (192, 128))
    video = np.stack([photo[:, 4 * f:4 * f + 128] for f in range(9)])[None]      # [1, 9, 128, 128, 3], a pan
    latents = wan.encode_video(video)                                           # [1, 16, 3, 16, 16]
    assert abs(latents.mean().item()) < 0.3 and 0.6 < latents.std().item() < 1.6

    def psnr(decoded):
        return 10 * np.log10(255 ** 2 / ((decoded.astype(float) - video.astype(float)) ** 2).mean())

    good = psnr(wan.decode(latents))
    assert good > 16.5
    assert good > psnr(wan.decode(wan.normalize_latents(latents))) + 1.5        # normalised twice: worse


def test_encode_rejects_frame_counts_the_vae_cannot_take(wan):
    with pytest.raises(ValueError, match="4k\\+1"):
        wan.encode_video(np.zeros((1, 8, 64, 64, 3), np.uint8))


def test_flow_matching_noise_and_target_match_the_scheduler(wan):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    x0, noise = torch.randn(2, 16, 3, 8, 8), torch.randn(2, 16, 3, 8, 8)
    scheduler.set_timesteps(10)
    for t in scheduler.timesteps:
        expected = scheduler.scale_noise(x0, t[None], noise)
        assert torch.allclose(wan.add_noise(x0, noise, t.expand(2)), expected, atol=1e-6)
    # A perfect prediction (pred = target) must take the scheduler's Euler step from σ straight to x0.
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    x_t = wan.add_noise(x0, noise, t.expand(2))
    x0_from_scheduler = scheduler.step(wan.target(x0, noise, t.expand(2)), t, x_t, return_dict=False)[0]
    assert torch.allclose(x0_from_scheduler, x0, atol=1e-5)


def test_v_prediction_noise_and_target_match_the_cogvideox_scheduler():
    cog = VideoModel.from_pretrained("tiny-cogvideox")
    assert cog.objective == "v" and isinstance(cog.pipe.scheduler, CogVideoXDDIMScheduler)
    x0, noise = torch.randn(3, 4, 3, 8, 8), torch.randn(3, 4, 3, 8, 8)
    t = torch.tensor([0, 517, 999])
    assert torch.allclose(cog.add_noise(x0, noise, t), cog.pipe.scheduler.add_noise(x0, noise, t), atol=1e-5)
    assert torch.allclose(cog.target(x0, noise, t), cog.pipe.scheduler.get_velocity(x0, noise, t), atol=1e-5)
    x_t, _, text_emb = noisy_inputs(cog)
    assert cog.predict(x_t, torch.tensor([10.0, 900.0]), text_emb).shape == x_t.shape


def test_training_timesteps_cover_the_range_with_the_sampler_shift(wan):
    t = wan.sample_timesteps(20000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 1000
    # shift 3 moves the median noise level from 0.5 to 3·0.5/(1 + 2·0.5) = 0.75
    assert abs(t.median().item() / 1000 - 0.75) < 0.02


def test_disabling_the_adapter_gives_exactly_the_base_output():
    model = VideoModel.from_pretrained("tiny")
    x_t, t, text_emb = noisy_inputs(model)
    with torch.no_grad():
        base = model.predict(x_t, t, text_emb)
        random_lora(model, "default", seed=1)
        with_lora = model.predict(x_t, t, text_emb)
        with model.adapter(None):
            disabled = model.predict(x_t, t, text_emb)
        after = model.predict(x_t, t, text_emb)
    assert not torch.allclose(with_lora, base, atol=1e-4)
    assert torch.equal(disabled, base)
    assert torch.equal(after, with_lora)  # the context restores the adapter


def test_switching_to_the_reference_adapter_never_changes_what_trains():
    model = VideoModel.from_pretrained("tiny")
    random_lora(model, "default", seed=1)
    model.add_lora(4, name="reference", trainable=False)
    model.set_adapter("default")
    with model.adapter("reference"):
        assert all(p.requires_grad for p in model.lora_parameters("default"))
        assert not any(p.requires_grad for p in model.lora_parameters("reference"))
    assert all(p.requires_grad for p in model.lora_parameters("default"))
    assert all(p.dtype == torch.float32 for p in model.lora_parameters("default"))
    x_t, t, text_emb = noisy_inputs(model)
    with torch.no_grad(), model.adapter("reference"):  # a B = 0 LoRA: the reference is the base model
        reference = model.predict(x_t, t, text_emb)
    with torch.no_grad(), model.adapter(None):
        assert torch.equal(reference, model.predict(x_t, t, text_emb))


@pytest.mark.parametrize("targets", ["attention", "attention+ffn"])
def test_lora_save_then_load_into_a_fresh_model_reproduces_outputs(tmp_path, targets):
    trained = VideoModel.from_pretrained("tiny")
    random_lora(trained, "default", seed=2, targets=targets)
    adapted = {n.rsplit(".lora_A", 1)[0].split("blocks.0.")[-1] for n, _ in trained.transformer.named_parameters()
               if "blocks.0." in n and ".lora_A" in n}
    ffn = {"ffn.net.0.proj", "ffn.net.2"}
    assert adapted == {f"attn{i}.{m}" for i in (1, 2) for m in ("to_q", "to_k", "to_v", "to_out.0")} | (
        ffn if targets == "attention+ffn" else set())
    trained.save_lora(str(tmp_path))
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    fresh = VideoModel.from_pretrained("tiny")
    fresh.load_lora(str(tmp_path), name="default")
    x_t, t, text_emb = noisy_inputs(trained)
    with torch.no_grad():
        assert torch.allclose(fresh.predict(x_t, t, text_emb), trained.predict(x_t, t, text_emb), atol=1e-5)
    # ...and a stock diffusers pipeline reads the same file.
    stock = tiny.build_tiny_pipeline("tiny")
    stock.load_lora_weights(str(tmp_path))
    with torch.no_grad():
        stock_out = stock.transformer(hidden_states=x_t, timestep=t, encoder_hidden_states=text_emb,
                                      return_dict=False)[0]
        assert torch.allclose(stock_out, trained.predict(x_t, t, text_emb), atol=1e-5)


def test_loading_a_missing_or_foreign_lora_says_what_is_wrong(tmp_path):
    model = VideoModel.from_pretrained("tiny")
    with pytest.raises(ModelLoadError, match="no LoRA"):
        model.load_lora(str(tmp_path / "nowhere"))
    cog = VideoModel.from_pretrained("tiny-cogvideox")
    cog.add_lora(4)
    cog.save_lora(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not fit"):
        model.load_lora(str(tmp_path))


def test_missing_model_folder_names_the_offline_preset():
    with pytest.raises(ModelLoadError, match="--model tiny"):
        VideoModel.from_pretrained("./no/such/model")


def test_same_seed_same_video(wan):
    first, latents = wan.sample(["a person walking"], frames=5, height=32, width=32, steps=2, seed=[7])
    second, _ = wan.sample(["a person walking"], frames=5, height=32, width=32, steps=2, seed=[7])
    third, _ = wan.sample(["a person walking"], frames=5, height=32, width=32, steps=2, seed=[8])
    assert first.shape == (1, 5, 32, 32, 3) and latents.shape == (1, 16, 2, 4, 4)
    assert np.array_equal(first, second) and not np.array_equal(first, third)


def test_loading_a_model_leaves_the_callers_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    VideoModel.from_pretrained("tiny")           # builds seeded random weights, then loads the shipped ones
    assert torch.equal(torch.rand(3), expected)


def test_a_fresh_lora_depends_on_its_seed_only():
    def lora_a(seed, draws_before):
        model = VideoModel.from_pretrained("tiny")
        torch.rand(draws_before)                 # whatever ran before must not matter
        model.add_lora(4, seed=seed)
        return torch.cat([p.detach().flatten() for p in model.lora_parameters()])

    assert torch.equal(lora_a(0, 1), lora_a(0, 1000))
    assert not torch.equal(lora_a(0, 1), lora_a(1, 1))


def test_any_sequence_of_adapter_switches_runs_exactly_the_adapter_asked_for():
    # _activate skips the peft calls that would change nothing; a wrong skip would run a stale adapter
    model = VideoModel.from_pretrained("tiny")
    x_t, t, text_emb = noisy_inputs(model)
    with torch.no_grad():
        expected = {None: model.predict(x_t, t, text_emb)}
        random_lora(model, "default", seed=1)
        expected["default"] = model.predict(x_t, t, text_emb)
        model.add_lora(4, name="reference", trainable=False)  # adding an adapter makes it the active one
        generator = torch.Generator().manual_seed(2)
        for p in model.lora_parameters("reference"):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        expected["reference"] = model.predict(x_t, t, text_emb)
    assert len({tuple(v.flatten()[:50].tolist()) for v in expected.values()}) == 3  # three different networks
    for name in ["default", None, "reference", "reference", None, None, "default", "default", "reference", None,
                 "reference", "default"]:
        model.set_adapter(name)
        with torch.no_grad():
            assert torch.equal(model.predict(x_t, t, text_emb), expected[name]), name
        assert all(p.requires_grad for p in model.lora_parameters("default")), name
        assert not any(p.requires_grad for p in model.lora_parameters("reference")), name
    for outer, inner in [("default", "reference"), ("reference", None), (None, "default")]:
        model.set_adapter(outer)
        with model.adapter(inner), torch.no_grad():
            assert torch.equal(model.predict(x_t, t, text_emb), expected[inner]), (outer, inner)
        with torch.no_grad():
            assert torch.equal(model.predict(x_t, t, text_emb), expected[outer]), (outer, inner)


def test_each_prompt_is_encoded_once_and_kept_by_the_model():
    # The model owns the one prompt cache: a prompt seen before never runs the text encoder again (a training
    # step reads it there), and what the cache returns is what diffusers' own encode_prompt gives for it.
    model = VideoModel.from_pretrained("tiny")
    encoded_rows = []
    hook = model.pipe.text_encoder.register_forward_hook(lambda module, args, out: encoded_rows.append(len(args[0])))
    try:
        first = model.encode_prompt(["a person walking", "a dog running"])          # [2, L, D]
        again = model.encode_prompt(["a dog running", "a person walking", "a dog running"])
        model.cache_prompts(["a person walking", "a cat"])
    finally:
        hook.remove()
    assert sum(encoded_rows) == 3  # "a person walking", "a dog running", then "a cat": once each
    expected, _ = model.pipe.encode_prompt(prompt=["a dog running", "a person walking", "a dog running"],
                                           do_classifier_free_guidance=False, device="cpu",
                                           max_sequence_length=model.defaults.max_text_tokens)
    torch.testing.assert_close(again, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(again[1], first[0]) and torch.equal(again[0], again[2])


def test_a_saved_lora_names_its_base_model_so_generate_finds_it_from_anywhere(tmp_path, monkeypatch):
    import json

    from model import DEFAULTS, MODEL_PRESETS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-wan").mkdir()
    (tmp_path / "tiny").mkdir()  # a folder named like a preset: "tiny" still means the preset
    pipe = tiny.build_tiny_pipeline("tiny")
    recorded = {name: VideoModel(pipe, "wan", DEFAULTS["tiny"], name).base_model
                for name in ("my-wan", "~/no-such-folder", "tiny", "wan-1.3b", MODEL_PRESETS["wan-1.3b"])}
    assert recorded == {"my-wan": str(tmp_path / "my-wan"), "~/no-such-folder": "~/no-such-folder", "tiny": "tiny",
                        "wan-1.3b": "wan-1.3b", MODEL_PRESETS["wan-1.3b"]: MODEL_PRESETS["wan-1.3b"]}
    model = VideoModel(pipe, "wan", DEFAULTS["tiny"], "my-wan")
    model.add_lora(4)
    model.save_lora(str(tmp_path / "lora"), info={"token": "ohwx"})
    info = json.loads((tmp_path / "lora" / "magicid.json").read_text())
    assert info == {"base_model": str(tmp_path / "my-wan"), "token": "ohwx"}
