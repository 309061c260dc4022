"""Wan2.2 at tiny sizes through the real diffusers classes: TI2V-5B's shape (a 48-channel VAE with 16x spatial
compression, per-token timesteps) and T2V-A14B's (two experts switched at boundary_ratio 0.875). The model runs the
expert the stock WanPipeline runs at each timestep, trains each expert's own LoRA, writes files diffusers' own
loader and ComfyUI read, and train.py runs and resumes on both shapes."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import comfy_lora
import dpo
import tiny
import train
from lora import LORA_FILE, LORA_FILE_LOW_NOISE
from model import VideoModel
from run import Run

REPO = Path(__file__).resolve().parents[1]
FRAMES, SIZE = 5, 64


def lora_model(name, rank=4, alpha=8.0, seed=0):
    """A model with a LoRA whose B factors are random (not the fresh zeros), so every expert's adapter matters."""
    model = VideoModel.from_pretrained(name)
    model.add_lora(rank, alpha=alpha)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for expert in range(len(model.transformers)):
            for key, p in model.transformers[expert].named_parameters():
                if "lora_" in key:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def inputs(model, batch=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *model.latent_shape(FRAMES, SIZE, SIZE), generator=generator)  # [B, C, f, h, w]
    return x, model.encode_prompt(["a sks person waving"] * batch)


def record_calls(transformers):
    """Hooks on each expert: the list of (expert index, timestep kwarg) of every forward, and the hook handles."""
    calls, handles = [], []
    for index, transformer in enumerate(transformers):
        def hook(module, args, kwargs, index=index):
            calls.append((index, kwargs["timestep"].detach().clone()))
        handles.append(transformer.register_forward_pre_hook(hook, with_kwargs=True))
    return calls, handles


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models' ops are too small to split: on 2 busy cores two threads ran ~15x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def five_b():
    return VideoModel.from_pretrained("tiny-wan2.2-5b")


@pytest.fixture(scope="module")
def two_experts():
    return lora_model("tiny-wan2.2-14b")


# ---------------------------------------------------------------------- TI2V-5B's shape

def test_5b_latents_are_48_channels_at_16x_and_standardised_with_its_own_statistics(five_b):
    video = torch.randint(0, 256, (1, FRAMES, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    latents = five_b.encode_video(video.numpy())
    assert latents.shape == (1, 48, 2, SIZE // 16, SIZE // 16)  # 4k+1 frames -> k+1, 64 px -> 4
    pixels = video.permute(0, 4, 1, 2, 3).double().div(127.5).sub(1.0)
    raw = five_b.vae.encode(pixels.float()).latent_dist.mode().double()
    mean = torch.tensor(five_b.vae.config.latents_mean, dtype=torch.float64).view(1, -1, 1, 1, 1)
    std = torch.tensor(five_b.vae.config.latents_std, dtype=torch.float64).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(latents.double(), (raw - mean) / std, atol=1e-5, rtol=1e-5)
    assert five_b.decode(latents).shape == (1, FRAMES, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="multiples of 32"):  # 16x VAE times the 2x2 patch
        five_b.check_video_size(FRAMES, 48, SIZE)


def test_5b_gives_the_transformer_the_pipelines_per_token_timesteps_and_the_same_output(five_b):
    """One step of the stock pipeline, recorded at the transformer, against model.predict on the same input."""
    seen = []
    handle = five_b.transformer.register_forward_hook(
        lambda module, args, kwargs, out: seen.append((kwargs, out[0].clone())), with_kwargs=True)
    try:
        five_b.sample(["a sks person waving"], frames=FRAMES, height=SIZE, width=SIZE, steps=1, guidance=1.0)
        stock_kwargs, stock_out = seen[0]
        x_t, stock_t = stock_kwargs["hidden_states"], stock_kwargs["timestep"]
        t = stock_t[:, 0]  # [B]: what train.py draws
        ours = five_b.predict(x_t, t, stock_kwargs["encoder_hidden_states"])
        ours_kwargs = seen[1][0]
    finally:
        handle.remove()
    tokens = 2 * (SIZE // 16 // 2) ** 2  # latent frames × (h/2) × (w/2)
    assert stock_t.shape == ours_kwargs["timestep"].shape == (1, tokens)
    assert torch.equal(ours_kwargs["timestep"], stock_t)
    assert torch.equal(ours, stock_out.float())


# ---------------------------------------------------------------------- T2V-A14B's two experts

def test_the_expert_at_each_timestep_is_the_one_the_stock_pipeline_runs(two_experts):
    model = two_experts
    assert model.expert_of(torch.tensor([999.0, 875.0, 874.99, 0.0])) == [0, 0, 1, 1]  # t >= 875: transformer
    calls, handles = record_calls(model.transformers)
    try:
        model.placement.place(0)
        switches = model.placement.switches
        model.sample(["a sks person waving"], frames=FRAMES, height=SIZE, width=SIZE, steps=30, guidance=1.0)
        stock = [(expert, t.item()) for expert, t in calls]
        assert {expert for expert, _ in stock} == {0, 1}  # the 30 steps cross the boundary
        # the stock loop's calls placed the experts too: high noise, then low noise, one move
        assert model.placement.switches == switches + 1 and model.placement.resident == 1
        calls.clear()
        x, emb = inputs(model)
        for _, t in stock:
            model.predict(x, torch.tensor([t]), emb)
        ours = [(expert, t.item()) for expert, t in calls]
    finally:
        for handle in handles:
            handle.remove()
    assert ours == stock


def test_a_mixed_batch_runs_each_row_on_its_expert_and_trains_only_that_experts_lora(two_experts):
    model = two_experts
    x, emb = inputs(model, batch=2)
    t = torch.tensor([950.0, 300.0])
    together = model.predict(x, t, emb)
    assert torch.equal(together[:1], model.predict(x[:1], t[:1], emb[:1]))
    assert torch.equal(together[1:], model.predict(x[1:], t[1:], emb[1:]))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for row, expert in ((0, 0), (1, 1)):
        for p in model.lora_parameters():
            p.grad.zero_()
        model.denoising_error(x, noise, t, emb)[row].backward()
        moved = [any(p.grad.abs().sum() > 0 for key, p in transformer.named_parameters() if ".default." in key)
                 for transformer in model.transformers]
        assert moved == [expert == 0, expert == 1]


def test_items_ordered_by_expert_move_the_gpu_expert_at_most_once_a_step(two_experts):
    """order_items predicts each item's expert from its draw seed; dpo.preference_step (train.py's DPO item) is
    the judge of which expert really ran. Unordered, the same items would switch experts several times."""
    model = two_experts
    x, emb = inputs(model)
    batch = {"latents_w": x, "latents_l": x.flip(-1), "text_emb": emb}
    expert_of_seed = {s: model.expert_of(model.sample_timesteps(1, torch.Generator().manual_seed(s)))[0]
                      for s in range(100, 140)}
    high, low = ([s for s, e in expert_of_seed.items() if e == expert][:4] for expert in (0, 1))
    seeds = [s for pair in zip(high, low) for s in pair]  # alternating experts: unordered, every item switches

    def switches_running(items):
        before = model.placement.switches
        for item in items:
            calls, handles = record_calls(model.transformers)
            dpo.preference_step(model, batch, beta=100.0, generator=torch.Generator().manual_seed(seeds[item]))
            for handle in handles:
                handle.remove()
            ran.append({expert for expert, _ in calls})
        return model.placement.switches - before

    ran = []
    assert switches_running(range(8)) >= 7
    ordered = model.order_items(range(8), seeds.__getitem__)
    predicted = [expert_of_seed[s] for s in seeds]
    assert [{predicted[i]} for i in range(8)] == ran[:8]
    assert predicted[ordered[0]] == model.placement.resident  # the resident one first
    assert switches_running(ordered) <= 1


def test_training_one_expert_draws_only_its_timesteps_from_the_truncated_shifted_density():
    shift, boundary = 3.0, 0.875  # tiny-wan2.2-14b's flow_shift and boundary ratio
    u_of = lambda sigma: sigma / (shift - (shift - 1) * sigma)  # noqa: E731, the inverse of the shift
    for suffix, inside in ((":low", lambda t: t < 875), (":high", lambda t: t >= 875)):
        model = VideoModel.from_pretrained("tiny-wan2.2-14b" + suffix)
        model.add_lora(4)
        t = model.sample_timesteps(20_000, torch.Generator().manual_seed(0))
        assert bool(inside(t).all())
        trained = 1 if suffix == ":low" else 0
        assert len(model.lora_parameters()) == len([k for k, _ in model.transformers[trained].named_parameters()
                                                    if ".default." in k])
        if suffix == ":low":  # P(t < 500 | t < 875) = u(0.5) / u(0.875) under u ~ U(0, 1)
            assert abs((t < 500).double().mean().item() - u_of(0.5) / u_of(boundary)) < 0.015
        else:                 # P(t >= 950 | t >= 875) = (1 − u(0.95)) / (1 − u(0.875))
            assert abs((t >= 950).double().mean().item() - (1 - u_of(0.95)) / (1 - u_of(boundary))) < 0.015


# ---------------------------------------------------------------------- files

def test_the_lora_folder_loads_into_both_experts_with_diffusers_own_loader(two_experts, tmp_path):
    from diffusers import WanPipeline

    folder = tmp_path / "magicid_lora"
    two_experts.save_lora(str(folder))
    stock = tiny.build_tiny_pipeline("tiny-wan2.2-14b")
    assert isinstance(stock, WanPipeline)
    stock.load_lora_weights(str(folder), adapter_name="magicid")
    stock.load_lora_weights(str(folder), weight_name=LORA_FILE_LOW_NOISE, adapter_name="magicid",
                            load_into_transformer_2=True)
    x, emb = inputs(two_experts)
    t = torch.tensor([500.0])
    with two_experts.adapter("default"):
        for expert, stock_transformer in enumerate((stock.transformer, stock.transformer_2)):
            ours = two_experts.transformers[expert](hidden_states=x, timestep=t, encoder_hidden_states=emb,
                                                    return_dict=False)[0]
            theirs = stock_transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]
            torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=1e-6)
    high, low = load_file(str(folder / LORA_FILE)), load_file(str(folder / LORA_FILE_LOW_NOISE))
    assert high.keys() == low.keys() and not all(torch.equal(high[k], low[k]) for k in high)


# The published A14B expert (Wan2.1-14B's architecture, comfy/ldm/wan/model.py): 40 blocks, 5120 wide, FFN 13824.
A14B_BLOCKS, A14B_WIDTH = 40, 5120
A14B_ATTENTION = [f"{kind}.{p}" for kind in ("self_attn", "cross_attn") for p in "qkvo"]
A14B_KEYS = {f"diffusion_model.blocks.{n}.{layer}.{part}" for n in range(A14B_BLOCKS) for layer in A14B_ATTENTION
             for part in ("lora_down.weight", "lora_up.weight", "alpha")}


def test_comfyui_gets_a_high_noise_and_a_low_noise_file_with_published_a14b_keys(two_experts, tmp_path):
    folder = tmp_path / "magicid_lora"
    two_experts.save_lora(str(folder))
    paths = comfy_lora.write_comfy_lora(folder)
    assert [p.name for p in paths] == ["magicid_lora_comfy_high_noise.safetensors",
                                       "magicid_lora_comfy_low_noise.safetensors"]
    for path, diffusers_file in zip(paths, (LORA_FILE, LORA_FILE_LOW_NOISE)):
        comfy, diffusers_state = load_file(str(path)), load_file(str(folder / diffusers_file))
        assert set(comfy) <= A14B_KEYS
        key = "diffusion_model.blocks.0.self_attn.q.lora_up.weight"
        assert torch.equal(comfy[key], diffusers_state["transformer.blocks.0.attn1.to_q.lora_B.weight"])


def test_a_published_size_a14b_expert_fills_the_published_key_list_with_its_shapes():
    """One A14B expert at its published config on the meta device (no memory), LoRA on attention."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    with torch.device("meta"):
        expert = WanTransformer3DModel(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
                                       num_layers=A14B_BLOCKS, text_dim=4096, cross_attn_norm=True,
                                       qk_norm="rms_norm_across_heads")
        expert.add_adapter(LoraConfig(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    state = {f"transformer.{key}": value for key, value in get_peft_model_state_dict(expert).items()}
    comfy = comfy_lora.to_comfy(state, 8.0)
    assert set(comfy) == A14B_KEYS
    assert comfy["diffusion_model.blocks.39.cross_attn.o.lora_down.weight"].shape == (4, A14B_WIDTH)


# ---------------------------------------------------------------------- training

def test_resume_across_an_expert_switch_is_bitwise(tmp_path):
    """train.optimize on the two-expert model: 6 steps at once, or 3, a stop, and a resume whose first step runs
    the other expert than the step before it (its idle LoRA must step as in the unbroken run)."""
    args = argparse.Namespace(batch_size=1, warmup=2, checkpoint_every=3)

    def item_loss(model, run, step, item):
        x, emb = inputs(model, seed=step)
        generator = torch.Generator().manual_seed(run.step_seed("identity", step, item))
        t = model.sample_timesteps(1, generator)
        noise = torch.randn(x.shape, generator=generator)
        loss = model.denoising_error(x, noise, t, emb).mean()
        return loss, {"loss": loss.detach()}

    def final_lora(out, stop_after=None):
        model = lora_model("tiny-wan2.2-14b")
        run = Run(str(out), config={"seed": 10}, resume=(out / "state.json").exists())
        experts = []

        def loss(step, item):
            if step == stop_after:
                raise KeyboardInterrupt
            experts.append(model.expert_of(model.sample_timesteps(
                1, torch.Generator().manual_seed(run.step_seed("identity", step, item))))[0])
            return item_loss(model, run, step, item)

        try:
            train.optimize(run, "identity", model, 6, 1e-2, args, loss)
        except KeyboardInterrupt:
            pass
        return [p.detach().clone() for p in model.lora_parameters()], experts

    unbroken, experts = final_lora(tmp_path / "a")
    assert experts[2] != experts[3] and set(experts[:3]) == {0, 1}  # both ran before the stop; a switch at it
    final_lora(tmp_path / "b", stop_after=3)
    resumed, _ = final_lora(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(unbroken, resumed))


QUICK = ["--frames", "5", "--height", "64", "--width", "64", "--identity-steps", "3", "--dpo-identity-steps", "2",
         "--dpo-dynamic-steps", "2", "--num-prompts", "1", "--videos-per-prompt", "3", "--static-videos", "2",
         "--eval-prompts", "1", "--eval-seeds", "1", "--sample-steps", "2", "--checkpoint-every", "2", "--rank", "4",
         "--dyn-margin", "0.05", "--tau-dyn", "100", "--batch-size", "2"]


def test_train_py_runs_end_to_end_on_both_shapes_and_writes_each_experts_files(tmp_path):
    """Both runs at once (one thread each): on two cores the test takes one run's time, not two."""
    from PIL import Image
    from skimage import data

    ref = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(ref)
    names = ["tiny-wan2.2-5b", "tiny-wan2.2-14b"]
    processes = [subprocess.Popen([sys.executable, str(REPO / "train.py"), "--ref", str(ref), "--out",
                                   str(tmp_path / name), "--model", name, *QUICK], cwd=REPO, text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}) for name in names]
    errors = [process.communicate(timeout=600)[1] for process in processes]
    for name, process, err in zip(names, processes, errors):
        assert process.returncode == 0, f"{name}: {err[-3000:]}"
        lora = tmp_path / name / "magicid_lora"
        expected = ({LORA_FILE, LORA_FILE_LOW_NOISE, "magicid_lora_comfy_high_noise.safetensors",
                     "magicid_lora_comfy_low_noise.safetensors"} if name.endswith("14b")
                    else {LORA_FILE, "magicid_lora_comfy.safetensors"})
        assert {p.name for p in lora.glob("*.safetensors")} == expected
        model = VideoModel.from_pretrained(name)
        model.load_lora(str(lora), name="default")  # what generate.py does with the folder
        for expert in model.transformers:  # every expert's LoRA trained: no B factor is still its initial 0
            factors_b = [p for key, p in expert.named_parameters() if ".default." in key and "lora_B" in key]
            assert factors_b and all(p.abs().sum() > 0 for p in factors_b)


def test_packed_host_copies_keep_every_tensor_and_fill_whole_chunks():
    """experts.packed_host_copies (pageable here: a CPU cannot pin): each copy equals its tensor (dtype, shape,
    values, a copy not an alias), small tensors share exact-size chunks at aligned offsets, a tensor larger than a
    chunk gets its own buffer. Hand-worked: chunk 4096 B, align 512; sizes 1000, 1200, 3000 B, 16 B, 0 B, 5000 B ->
    offsets 0 and 1024 in chunk 1 (1024 + 1200 = 2224; the next, 2560 + 3000 > 4096, opens chunk 2 at 0), 16 B at
    3072 of chunk 2, the empty tensor anywhere, 5000 B alone."""
    from experts import packed_host_copies

    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    tensors = [torch.randn(250, generator=generator),                                  # fp32 1000 B
               torch.randn(20, 30, generator=generator).to(torch.bfloat16),            # 1200 B
               torch.randn(750, generator=generator),                                  # 3000 B
               torch.randint(0, 9, (2,), generator=generator),                         # int64 16 B
               torch.zeros(0, 3),                                                      # 0 B
               torch.randn(2500, generator=generator).half()]                          # 5000 B
    copies = packed_host_copies(tensors, chunk_bytes=4096, align=512, pin=False)
    for t, c in zip(tensors, copies):
        assert c.dtype == t.dtype and c.shape == t.shape and torch.equal(c, t)
    bases = [c.untyped_storage().data_ptr() for c in copies]
    offsets = [c.data_ptr() - b for c, b in zip(copies, bases)]
    assert bases[0] == bases[1] != bases[2] == bases[3] != bases[5]
    assert offsets[:4] == [0, 1024, 0, 3072]                                           # (an empty tensor has no address)
    assert [copies[i].untyped_storage().nbytes() for i in (0, 2)] == [4096, 4096]
    assert copies[5].untyped_storage().nbytes() == 5000
    tensors[0].add_(1)
    assert not torch.equal(copies[0], tensors[0])                                      # a copy, not a view of it
