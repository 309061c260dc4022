"""Behaviours that decide whether MagicID trains the right thing, each pinned from outside.

Every test here was checked by breaking the behaviour it names (the way a plausible edit would) and
seeing it fail: which frames r_id looks at, how r_dyn pools frame pairs, VBench's resolution scaling,
which face of a reference photo is the person, the dynamic pairs' identity margin, how parallel.shard
splits the work, which side of a pair Diffusion-DPO moves towards, and that each training step draws
its own items, t and ε. Each asserts an outcome a reader can check by hand, not a copy of the code's own
formula. (The training loop end to end, warm-up, DPO's reference and kill/resume: tests/test_train.py.)
"""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

from argparse import Namespace
from functools import partial

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's modules are flat top-level files

import faces  # noqa: E402
import rewards  # noqa: E402
import sampling  # noqa: E402
import train  # noqa: E402
from dpo import preference_step  # noqa: E402
from model import VideoModel  # noqa: E402
from repository import Repository  # noqa: E402
from run import Run  # noqa: E402

ASTRONAUT = skimage.data.astronaut()  # uint8 [512, 512, 3], one face of about 87 px at x 179-266, y 83-170


@pytest.fixture(scope="module")
def dlib_encoder():
    return faces.make_face_encoder("dlib")


# ---- r_id: which frames it looks at -------------------------------------------------------------

def test_r_id_samples_16_evenly_spaced_frames_of_81_first_and_last_included():
    # 80 / 15 = 5.33 frames apart, rounded: the last fifth of the video (frames 64..80) gets 4 of the 16
    expected = [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59, 64, 69, 75, 80]
    assert rewards.sample_frame_indices(81, 16).tolist() == expected


def test_r_id_scores_the_end_of_a_long_video_where_identity_fades(dlib_encoder, tmp_path):
    # 81 frames: no face for frames 0..63, the reference face from 64 on. Scoring the first 16 frames
    # would never see the face; evenly spaced frames see it in exactly the sampled frames >= 64.
    photo = tmp_path / "astronaut.png"
    Image.fromarray(ASTRONAUT).save(photo)
    refs = faces.load_references([photo], dlib_encoder)
    video = np.full((81, *ASTRONAUT.shape), 128, np.uint8)   # [F, H, W, 3] grey frames
    video[64:] = ASTRONAUT
    score = rewards.identity_reward(video, refs, dlib_encoder, num_frames=16)
    assert score.frames.tolist() == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59, 64, 69, 75, 80]
    with np.errstate(invalid="ignore"):
        face_seen = np.asarray(score.per_frame, float) > 0.5     # a frame without a face never scores high
    assert face_seen.tolist() == [frame >= 64 for frame in score.frames]


# ---- r_dyn: how the frame pairs are pooled, and VBench's scale -----------------------------------

def panned_video(image, size, shifts):
    """Crops [size, size] of `image` moving right by shifts[k] px between frame k and k + 1 -> [F, size, size, 3]."""
    offsets = np.concatenate([[0], np.cumsum(shifts)]).astype(int)
    top = (image.shape[0] - size) // 2
    return np.stack([image[top:top + size, x:x + size] for x in offsets])


def test_r_dyn_is_the_mean_over_frame_pairs_not_the_max():
    # Pairs moving 0, 2, 8 and 4 px (256-px frames: flow is measured at this size). r_dyn of the video
    # is the average of the r_dyn of its four 2-frame pieces (each piece has one pair: its own value).
    video = panned_video(ASTRONAUT, 256, [0, 2, 8, 4])
    pieces = [rewards.dynamic_reward(video[k:k + 2]).reward for k in range(4)]
    assert pieces[0] < 0.5 < pieces[1] < pieces[3] < pieces[2]          # the flow sees the shifts' order
    assert rewards.dynamic_reward(video).reward == pytest.approx(np.mean(pieces), rel=1e-5)


@pytest.mark.parametrize("native_shift, dynamic", [(16, True), (8, False)])
def test_vbench_decision_at_512_px_is_rescaled_once(native_shift, dynamic):
    # At 512 px VBench's threshold is 6 · 512 / 256 = 12 native px per pair, i.e. 6 px at our 256-px
    # scale. 16 native px (8 at 256) moves; 8 native px (4 at 256) does not. Rescaling twice would call
    # 16 px still (8 < 12); not rescaling would call 8 px moving (8 > 6). fps 8: every pair is VBench's.
    large = np.asarray(Image.fromarray(ASTRONAUT).resize((1024, 1024), Image.Resampling.LANCZOS))
    video = panned_video(large, 512, [native_shift] * 8)               # [9, 512, 512, 3]
    score = rewards.dynamic_reward(video, fps=8)
    assert score.reward == pytest.approx(native_shift / 2, rel=0.35)   # px at 256: half the native shift
    assert score.is_dynamic == dynamic


# ---- the reference photo: the largest face is the person ----------------------------------------

def two_astronauts(large_in_grey: bool) -> np.ndarray:
    """One photo [420, 640, 3] with the astronaut's face twice: ~180 px (blurred, so dlib scores it
    below the small one and lists it second) and ~104 px; one copy grey, the other in colour, so the
    aligned crop load_references keeps says which face it took."""
    region = ASTRONAUT[30:230, 120:330]                                  # [200, 210, 3] face and margin

    def copy(scale, grey, blur):
        img = Image.fromarray(region).resize((round(210 * scale), round(200 * scale)), Image.Resampling.LANCZOS)
        img = np.asarray(img.filter(ImageFilter.GaussianBlur(blur)) if blur else img)
        return np.repeat(img.mean(2, keepdims=True).astype(np.uint8), 3, 2) if grey else img

    large, small = copy(2.0, large_in_grey, blur=4), copy(1.1, not large_in_grey, blur=0)
    photo = np.full((420, 640, 3), 128, np.uint8)
    photo[:large.shape[0], :large.shape[1]] = large                     # [400, 420]
    photo[100:100 + small.shape[0], 405:405 + small.shape[1]] = small   # [220, 231]
    return photo


@pytest.mark.parametrize("large_in_grey", [True, False])
def test_the_reference_face_is_the_largest_not_the_first_found(dlib_encoder, tmp_path, large_in_grey):
    photo = tmp_path / "two_faces.png"
    Image.fromarray(two_astronauts(large_in_grey)).save(photo)
    found = dlib_encoder.detector.run(two_astronauts(large_in_grey), 0, faces.DLIB_MIN_SCORE)[0]
    assert [r.width() < 150 for r in found] == [True, False]   # dlib itself lists the small face first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                             # the several-faces warning: faces.py's test
        refs = faces.load_references([photo], dlib_encoder)
    crop = refs.crops[0].astype(int)                                # [150, 150, 3] aligned face
    is_grey = np.abs(crop[..., 0] - crop[..., 2]).mean() < 1
    assert is_grey == large_in_grey


# ---- dynamic pairs: the identity margin is δ_id / 2 --------------------------------------------

@pytest.mark.parametrize("id_gap, paired", [(0.07, True), (0.04, False)])
def test_dynamic_pairs_take_an_identity_gap_of_half_delta(id_gap, paired):
    # Two videos of one prompt, equal motion: the winner only has the better identity. δ_id = 0.1, so
    # a gap of 0.07 (in [δ/2, δ)) makes a dynamic pair and 0.04 (below δ/2) does not.
    r_id, r_dyn = [0.5 + id_gap, 0.5], [3.0, 3.0]
    sel = sampling.select_dynamic_pairs(r_id, r_dyn, ["p", "p"], ["initial", "initial"], delta_id=0.1)
    assert sel.pairs == ([(0, 1)] if paired else [])


# ---- parallel.shard: each process does only its share ------------------------------------------

def test_each_of_two_processes_gets_only_its_share_of_the_jobs():
    # Two real processes with the variables torchrun / accelerate launch set (gloo on CPU).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = "import json, parallel; print(json.dumps(parallel.shard(list(range(7)))))"
    processes = [subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}) for rank in range(2)]
    shares = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        shares.append(json.loads(out.strip().splitlines()[-1]))
    assert shares == [[0, 2, 4, 6], [1, 3, 5]]   # rank r takes jobs r, r + 2, ...: none twice, none lost


# ---- Diffusion-DPO moves towards the winner ----------------------------------------------------

@pytest.fixture(scope="module")
def dpo_start():
    """The tiny Wan model as DPO finds it: a trainable "default" LoRA (small random B, so every weight
    matters) and a frozen "reference" copy of it."""
    model = VideoModel.from_pretrained("tiny")
    model.add_lora(4, name="default")
    draw = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.lora_parameters("default"):
            if not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=draw))
    model.add_lora(4, name="reference", trainable=False)
    train.copy_adapter(model, "default", "reference")
    model.set_adapter("default")
    return model


@pytest.fixture
def tiny(dpo_start):
    """dpo_start with its trainable LoRA put back after the test."""
    saved = [p.detach().clone() for p in dpo_start.lora_parameters("default")]
    yield dpo_start
    with torch.no_grad():
        for p, s in zip(dpo_start.lora_parameters("default"), saved):
            p.copy_(s)
            p.grad = None
    dpo_start.set_adapter("default")


def test_one_dpo_step_lowers_the_winners_error_relative_to_the_losers(tiny):
    # The winner is known from outside (latents_w); its error and the loser's are measured here with
    # model.denoising_error on the draw preference_step makes from seed 7 (its t, then its ε). A DPO step
    # must lower e(winner) − e(loser); training on [losers; winners] would raise it.
    shape = (1, *tiny.latent_shape(5, 64, 64))                            # [1, C, f, h, w]
    data = torch.Generator().manual_seed(1)
    winner, loser = torch.randn(shape, generator=data), torch.randn(shape, generator=data)
    text = tiny.encode_prompt(["a person surfing a big wave"])            # [1, L, D]

    def errors():
        draw = torch.Generator().manual_seed(7)
        t = tiny.sample_timesteps(1, draw)
        noise = torch.randn(shape, generator=draw)
        with torch.no_grad(), tiny.adapter("default"):
            return [tiny.denoising_error(x, noise, t, text).item() for x in (winner, loser)]

    before = errors()
    loss, metrics = preference_step(tiny, {"latents_w": winner, "latents_l": loser, "text_emb": text},
                                    generator=torch.Generator().manual_seed(7))
    # the same draw as preference_step's, whichever row it calls the winner
    assert sorted(before) == pytest.approx(sorted([metrics["err_w"].item(), metrics["err_l"].item()]), rel=1e-5)
    loss.backward()
    params = tiny.lora_parameters("default")
    grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
    torch.optim.SGD(params, lr=1e-2 / grad_norm.item()).step()            # a small step down the gradient
    after = errors()
    assert after[0] - after[1] < before[0] - before[1]


# ---- every training step draws its own items, t and ε -------------------------------------------

def test_step_seeds_differ_for_every_stage_step_and_item(tmp_path):
    run = Run(str(tmp_path / "run"), config={"seed": 0}, resume=False)
    stages, steps, items = ("identity", "dpo_identity_round0", "dpo_dynamic_round0"), range(300), range(-1, 4)
    seeds = {run.step_seed(stage, step, item) for stage in stages for step in steps for item in items}
    assert len(seeds) == len(stages) * len(steps) * len(items)


def test_the_identity_and_dpo_losses_draw_anew_at_each_step_and_repeat_within_one(tiny, tmp_path):
    # One static video and one pair, so only t and ε can change the loss between steps. The step seeds
    # reach the losses as in train.main: partial(run.step_seed, stage).
    run = Run(str(tmp_path / "run"), config={"seed": 0}, resume=False)
    repo = Repository(tmp_path / "repository")
    shape = tiny.latent_shape(5, 64, 64)
    data = torch.Generator().manual_seed(2)
    ids = [repo.add(torch.randn(shape, generator=data), "a photo of a sks person", "static",
                    {"r_id": 0.9, "r_dyn": 0.0}, seed) for seed in range(2)]
    statics = [e for e in repo.entries() if e["id"] == ids[0]]
    pairs = {"pairs": [ids], "prompts": ["a photo of a sks person"]}
    args = Namespace(batch_size=2, beta=2500.0, sft_weight=0.0)
    with torch.no_grad():
        identity = [train.reconstruction_loss(tiny, repo, statics, args,
                                              partial(run.step_seed, "identity"), step, 0)[0].item() for step in (0, 0, 1)]
        dpo = [train.dpo_loss_of_pair(tiny, repo, pairs, args, args.beta, partial(run.step_seed, "dpo_identity_round0"),
                                      step, 0)[1]["err_w"].item() for step in (0, 0, 1)]
    for losses in (identity, dpo):
        assert losses[0] == losses[1] and losses[1] != losses[2]
