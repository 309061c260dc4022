"""train.py's wiring, piece by piece: what the equations' tests cannot see (issue 29, item 3).

Each test names a plausible one-line bug that left the rest of the suite green, and checks the piece
against an expectation worked out here, not a second run of the same code:
  - optimize clips the summed gradient to norm 1 before AdamW    (a float64 AdamW by hand)
  - select_pairs hands the judge's r_sem and --dyn-margin to the rules    (hand-made repositories)
  - a DPO step draws its own pairs, and each item its own t and ε    (what the model was given)
  - copy_adapter copies source -> target
  - the ID reward keeps, in each frame, the face closest to the reference, not the largest nor the
    least like it    (a frame with two real people of known identity)
The online rounds and the report's columns, which need a whole run, are in test_wiring_rounds.py.
"""

import argparse
from functools import partial

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import train
from faces import ID_CALIBRATION, DlibFaceEncoder, load_references, read_photo
from model import VideoModel
from repository import Repository
from rewards import identity_reward
from run import Run
from sampling import crop_around_face



@pytest.fixture
def tiny_model():
    """The tiny preset (real diffusers classes, tiny weights, CPU) with a rank-1 LoRA named "default"."""
    model = VideoModel.from_pretrained("tiny")
    model.add_lora(1, name="default", seed=0)
    return model


# ---------------------------------------------------------------------- optimize: gradient clipping

def adamw_by_hand(gradients, lr, betas=(0.9, 0.999), eps=1e-8):
    """The displacement θ_T − θ_0 of AdamW (weight decay 0) fed `gradients` [T, N], in float64."""
    m = v = np.zeros_like(gradients[0])
    theta = np.zeros_like(gradients[0])
    for t, g in enumerate(gradients, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def test_optimize_clips_the_gradient_to_norm_one_before_the_adamw_step(tmp_path, tiny_model):
    # loss at step k = c_k · Σ <θ, d> with ‖d‖ = 1, so ∇ = c_k · d whatever θ is. c = (100, 0.5): step 0's
    # gradient is clipped to norm 1, step 1's is not. AdamW ignores one constant scale of all gradients but
    # not a scale that changes between steps: the second step moves θ by 0.93·lr per unit of d when step 0
    # was clipped, by 0.67·lr when it was not.
    params = tiny_model.lora_parameters("default")
    rng = np.random.default_rng(0)
    directions = [rng.standard_normal(tuple(p.shape)) for p in params]
    norm = np.sqrt(sum((d ** 2).sum() for d in directions))
    directions = [d / norm for d in directions]                      # ‖d‖ = 1 over every LoRA tensor
    d_torch = [torch.tensor(d, dtype=torch.float32) for d in directions]
    scale = {0: 100.0, 1: 0.5}

    def item_loss(step, item):
        loss = scale[step] * sum((p * d).sum() for p, d in zip(params, d_torch))
        return loss, {"loss": loss.detach()}

    before = [p.detach().clone().double().numpy() for p in params]
    run = Run(str(tmp_path / "run"), config={"seed": 0}, resume=False)
    args = argparse.Namespace(warmup=1, batch_size=2, checkpoint_every=100)
    lr = 1e-3
    train.optimize(run, "clipping", tiny_model, 2, lr, args, item_loss)

    flat_d = np.concatenate([d.ravel() for d in directions])
    clipped = [c * flat_d * min(1.0, 1.0 / (c + 1e-6)) for c in scale.values()]  # torch: max_norm / (norm + 1e-6)
    expected = adamw_by_hand(np.stack(clipped), lr)
    moved = np.concatenate([(p.detach().double().numpy() - b).ravel() for p, b in zip(params, before)])
    np.testing.assert_allclose(moved, expected, rtol=2e-3, atol=2e-8)
    unclipped = adamw_by_hand(np.stack([c * flat_d for c in scale.values()]), lr)
    assert np.abs(expected - unclipped).max() > 100 * np.abs(moved - expected).max()  # the test can tell them apart
    logged = {r["step"]: r["grad_norm"] for r in run.read_log()}
    assert logged == pytest.approx({0: 100.0, 1: 0.5}, rel=1e-5)   # the log keeps the norm before clipping



# ---------------------------------------------------------------------- select_pairs: r_sem and --dyn-margin

def hand_made_repository(root, videos):
    """A repository of one prompt's generated videos with given rewards: {name: (source, r_id, r_dyn, r_sem)}.
    Returns it and {name: video id}."""
    repo, ids = Repository(root), {}
    for seed, (name, (source, r_id, r_dyn, r_sem)) in enumerate(videos.items()):
        rewards = {"r_id": r_id, "r_dyn": r_dyn, "r_sem": r_sem}
        ids[name] = repo.add(torch.zeros(1, 1, 1, 1), "a sks person dancing", source, rewards, seed)
    return repo, ids


def pair_args(**overrides):
    """train.parse_args' defaults for the pair rules (tau_dyn 2, dyn_margin 0.2, ...), with overrides."""
    args = train.parse_args(["--ref", "unused.jpg", "--model", "tiny"])
    return argparse.Namespace(**{**vars(args), **overrides})


def test_select_pairs_makes_r_sem_an_objective_of_the_dynamic_rule_when_a_judge_scored(tmp_path):
    # Worked by hand (δ_id = 0.02): A beats B in r_id (0.90 vs 0.80) and r_dyn (10 vs 5): on (r_id, r_dyn)
    # A dominates B by more than the margins, one dynamic pair. The judge prefers B (r_sem 0.3 vs 0.2), so
    # on (r_id, r_dyn, r_sem) A no longer dominates B: no pair. No identity pair: |Δr_dyn| = 5 > τ_dyn = 2.
    repo, ids = hand_made_repository(tmp_path, {"A": ("initial", 0.90, 10.0, 0.2), "B": ("finetuned", 0.80, 5.0, 0.3)})
    unjudged = train.select_pairs(repo, pair_args(), delta_id=0.02, judged=False)
    judged = train.select_pairs(repo, pair_args(), delta_id=0.02, judged=True)
    assert unjudged["dynamic"]["pairs"] == [[ids["A"], ids["B"]]]
    assert judged["dynamic"]["pairs"] == []
    assert judged["summary"]["dynamic"]["rejected"]["loser not dominated"] == 2  # A over B, and B over A
    assert judged["identity"]["pairs"] == unjudged["identity"]["pairs"] == []


@pytest.mark.parametrize("dyn_margin, pairs", [(0.05, 1), (0.15, 0), (0.2, 0)])
def test_select_pairs_passes_dyn_margin_to_the_dynamic_rule(tmp_path, dyn_margin, pairs):
    # Same r_id; A moves 11 px, B 10 px: A's lead is 10 % of B's motion, a dynamic pair for a margin ≤ 10 %
    # only (the default 0.2 makes none).
    repo, ids = hand_made_repository(tmp_path, {"A": ("initial", 0.8, 11.0, None), "B": ("initial", 0.8, 10.0, None)})
    chosen = train.select_pairs(repo, pair_args(dyn_margin=dyn_margin), delta_id=0.02, judged=False)
    assert chosen["dynamic"]["pairs"] == [[ids["A"], ids["B"]]] * pairs


# ---------------------------------------------------------------------- DPO: each step its pairs, each item its t, ε

def test_each_dpo_step_draws_its_own_pairs_and_each_item_its_own_timestep_and_noise(tmp_path, tiny_model):
    # Four pairs of videos whose latents are filled with the video's number, so the batch the model receives
    # says which pair was drawn; the model's denoising_error is watched (the real one runs) for the t and ε of
    # each item. Over 8 steps of 2 items every pair comes up, the steps do not all draw one batch, the two
    # items of a step get different t and ε, and winner and loser of one item share them (dpo.py).
    shape = tiny_model.latent_shape(5, 32, 32)                      # [C, f, h, w]
    repo = Repository(tmp_path / "repository")
    ids = [repo.add(torch.full(shape, float(k)), "a sks person", "initial", {"r_id": 0.0, "r_dyn": 0.0}, k)
           for k in range(8)]
    pairs = {"pairs": [[ids[2 * k], ids[2 * k + 1]] for k in range(4)], "prompts": ["a sks person"] * 4}
    seen = []                                                      # per call: (winner number, t [2], noise [2, ...])
    real_error = tiny_model.denoising_error

    def watched_error(x0, noise, t, text_emb):
        seen.append((x0[0].mean().item(), t.clone(), noise.clone()))
        return real_error(x0, noise, t, text_emb)

    tiny_model.denoising_error = watched_error
    run = Run(str(tmp_path / "run"), config={"seed": 0}, resume=False)
    args = argparse.Namespace(batch_size=2, beta=100.0, sft_weight=0.0)
    step_seed = partial(run.step_seed, "dpo_identity_round0")
    steps = 8
    for step in range(steps):
        for item in range(args.batch_size):
            train.dpo_loss_of_pair(tiny_model, repo, pairs, args, args.beta, step_seed, step, item)
    policy = seen[::2]                                             # each item: the policy's call, then the reference's
    assert len(policy) == steps * args.batch_size
    drawn = [int(round(w)) // 2 for w, _, _ in policy]            # the pair of each item, in order
    assert set(drawn) == {0, 1, 2, 3}, drawn
    batches = {tuple(drawn[2 * s: 2 * s + 2]) for s in range(steps)}
    assert len(batches) > 1, drawn
    for s in range(steps):
        (_, t0, e0), (_, t1, e1) = policy[2 * s], policy[2 * s + 1]
        assert t0[0] != t1[0] and not torch.equal(e0[0], e1[0]), f"the items of step {s} share t or ε"
    for _, t, noise in policy:
        assert t[0] == t[1] and torch.equal(noise[0], noise[1])   # winner and loser: one t, one ε


# ---------------------------------------------------------------------- copy_adapter

def test_copy_adapter_copies_source_into_target_and_leaves_the_source(tiny_model):
    tiny_model.add_lora(1, name="reference", trainable=False, seed=1)
    with torch.no_grad():
        for p in tiny_model.lora_parameters("default"):
            p.normal_()
    source = [p.detach().clone() for p in tiny_model.lora_parameters("default")]
    old_target = [p.detach().clone() for p in tiny_model.lora_parameters("reference")]
    assert not all(torch.equal(a, b) for a, b in zip(source, old_target))
    train.copy_adapter(tiny_model, "default", "reference")
    assert all(torch.equal(p, a) for p, a in zip(tiny_model.lora_parameters("reference"), source))
    assert all(torch.equal(p, a) for p, a in zip(tiny_model.lora_parameters("default"), source))


# ---------------------------------------------------------------------- the ID reward: which face of a frame counts

def framed_face(photo, height):
    """A photo cropped to 2 face heights around its largest face, resized to height × height: uint8 [h, h, 3]."""
    face = max(DLIB.find_faces(photo, thorough=True), key=lambda f: f.area)
    return cv2.resize(crop_around_face(photo, face.box, 1.0, 2.0), (height, height), interpolation=cv2.INTER_AREA)


def two_people_video(small, large, show=("small", "large"), frames=2):
    """A still video, 360 × 640, grey: the `small` person's face (55 px) on the left, the `large` one's (110 px)
    on the right; `show` leaves either out (grey in its place). uint8 [frames, 360, 640, 3]."""
    canvas = np.full((360, 640, 3), 128, np.uint8)
    if "small" in show:
        canvas[120:230, 60:170] = framed_face(small, 110)
    if "large" in show:
        canvas[70:290, 360:580] = framed_face(large, 220)
    return np.repeat(canvas[None], frames, axis=0)


DLIB = DlibFaceEncoder()
ASTRONAUT = skimage.data.astronaut()        # Eileen Collins (NASA, public domain)


@pytest.fixture(scope="module")
def people(tmp_path_factory, faces_data):
    """Two real people: the astronaut, and id02 of shared/data/faces (a frame of one of its videos as the
    reference, a frame of another video in the scene). Returns {name: (scene photo, References)}."""
    folder = tmp_path_factory.mktemp("people")
    Image.fromarray(ASTRONAUT).save(folder / "astronaut.png")
    return {"astronaut": (ASTRONAUT, load_references([folder / "astronaut.png"], DLIB)),
            "id02": (read_photo(faces_data / "id02_v1_f0.png"), load_references([faces_data / "id02_v2_f0.png"], DLIB))}


@pytest.mark.parametrize("reference", ["astronaut", "id02"])
def test_the_id_reward_keeps_the_face_of_the_reference_person_when_two_people_are_in_the_frame(people, reference):
    # The astronaut's face is the small one, id02's the large one. Whoever the reference is, r_id of the
    # two-person video is r_id of a video showing that person alone: the face kept is the one closest to the
    # reference, not the largest (wrong for the astronaut) nor the least like it (wrong for both).
    (small, _), (large, _) = people["astronaut"], people["id02"]
    refs = people[reference][1]
    own_place = "small" if reference == "astronaut" else "large"
    other_place = "large" if reference == "astronaut" else "small"
    both = identity_reward(two_people_video(small, large), refs, DLIB)
    alone = identity_reward(two_people_video(small, large, show=(own_place,)), refs, DLIB)
    stranger = identity_reward(two_people_video(small, large, show=(other_place,)), refs, DLIB)
    assert both.face_hit_rate == alone.face_hit_rate == stranger.face_hit_rate == 1.0
    assert len(DLIB.find_faces(two_people_video(small, large)[0])) == 2   # both faces are seen
    assert alone.reward - stranger.reward > 2 * ID_CALIBRATION["dlib"].delta_id   # two people dlib tells apart
    assert both.reward == pytest.approx(alone.reward, abs=1e-4), (both.reward, alone.reward, stranger.reward)


# ---------------------------------------------------------------------- --beta auto

def test_beta_auto_is_two_over_the_reference_median_error_gap_on_each_phase_first_draws(tiny_model, tmp_path):
    # train.calibrated_beta (dpo.beta_from_error_gaps): the reference adapter's errors e_ref(x_w), e_ref(x_l) on the
    # pairs and (t, ε) of each DPO phase's first BETA_DRAWS items, recomputed here from the seed schedule by hand,
    # and β = 2 / their median |gap|. A resumed run reads β back from the run folder instead of measuring again.
    tiny_model.add_lora(1, name="reference", trainable=False, seed=1)
    weights = torch.Generator().manual_seed(5)
    for key, p in tiny_model.transformer.named_parameters():
        if "lora_B.reference" in key:                               # B = 0 would make the reference the base
            p.data = torch.randn(p.shape, generator=weights) * 0.1
    shape = tiny_model.latent_shape(5, 32, 32)                      # [C, f, h, w]
    repo = Repository(tmp_path / "repository")
    data = torch.Generator().manual_seed(6)
    ids = [repo.add(torch.randn(shape, generator=data), "a sks person", "initial", {"r_id": 0.0, "r_dyn": 0.0}, k)
           for k in range(6)]
    pairs = {"identity": {"pairs": [[ids[0], ids[1]], [ids[2], ids[3]]], "prompts": ["a sks person"] * 2},
             "dynamic": {"pairs": [[ids[4], ids[5]]], "prompts": ["a sks person"]}}
    run = Run(str(tmp_path / "run"), config={"seed": 0}, resume=False)
    args = argparse.Namespace(batch_size=2, sft_weight=0.0)
    beta = train.calibrated_beta(run, tiny_model, repo, pairs, args, 0)

    gaps, text = [], tiny_model.encode_prompt(["a sks person"])
    with torch.no_grad(), tiny_model.adapter("reference"):
        for rule in ("identity", "dynamic"):
            stage = f"dpo_{rule}_round0"
            for draw in range(train.BETA_DRAWS):
                step, item = divmod(draw, args.batch_size)
                picks = np.random.default_rng(run.step_seed(stage, step)).integers(0, len(pairs[rule]["pairs"]), 2)
                winner, loser = pairs[rule]["pairs"][picks[item]]
                draws = torch.Generator().manual_seed(run.step_seed(stage, step, item))
                t = tiny_model.sample_timesteps(1, draws)                     # t first, then ε: dpo.preference_step
                noise = torch.randn((1, *shape), generator=draws)
                e_w, e_l = (tiny_model.denoising_error(repo.latents(v)[None].float(), noise, t, text).item()
                            for v in (winner, loser))
                gaps.append(abs(e_w - e_l))
    lower_median = np.sort(gaps)[(len(gaps) - 1) // 2]             # torch's median of an even count
    assert len(gaps) == 2 * train.BETA_DRAWS
    assert beta == pytest.approx(2 / lower_median, rel=1e-4)
    saved = run.dir / "beta_round0.json"
    saved.write_text('{"beta": 123.0}')
    assert train.calibrated_beta(run, tiny_model, repo, pairs, args, 0) == 123.0
