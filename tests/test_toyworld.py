"""The toy world (toyworld/): its videos move as captioned, its people have faces dlib finds, pretraining runs,
the shipped weights move when asked, hold still otherwise, and draw a person."""

from pathlib import Path

import numpy as np
import torch

from toyworld import motion as flow
from toyworld import people
from toyworld import pretrain as pt
from toyworld import world as toy
import tiny
from model import DEFAULTS, VideoModel

SHIPPED = Path(tiny.TINY_WEIGHTS_DIR) / "tiny"


def test_every_motion_moves_as_its_caption_says():
    world = toy.ToyWorld("cpu", seed=3)
    videos, captions, motions = world.batch(45, frames=9, size=128)           # [n, 3, F, H, W]
    assert videos.shape == (45, 3, 9, 128, 128) and videos.min() >= -1 and videos.max() <= 1
    assert set(motions) == set(toy.MOTIONS)
    for caption, motion in zip(captions, motions):
        assert caption.startswith(("a photo of", "a close-up photo of", "a still image of")) == (motion == "still")
    rate = flow.caption_follow_rate(toy.to_uint8(videos), motions)
    assert rate >= 0.85, f"only {rate:.2f} of the toy world's videos move as captioned"


def test_a_leftward_pan_flows_right_and_a_zoom_in_flows_outward():
    rng = np.random.default_rng(0)
    canvas = torch.rand(1, 3, toy.CANVAS, toy.CANVAS)
    canvas = torch.nn.functional.avg_pool2d(canvas, 9, 1, 4)                   # smooth texture: flow is well defined
    for motion, key, sign in (("camera pans left", "dx", 1), ("camera tilts down", "dy", -1),
                              ("camera zooms in", "zoom", 1)):
        cams = torch.from_numpy(toy.camera_path(motion, 9, 128, rng)).float()[None]  # [1, F, 3]
        video = toy.to_uint8(toy.render(canvas, cams, 128))[0]
        assert flow.measure_motion(video)[key] * sign > 0, motion


def test_no_face_image_is_in_the_pretraining_data():
    assert not set(toy.NATURAL_IMAGES) & set(toy.FACE_IMAGES)
    assert "astronaut" in toy.FACE_IMAGES  # the benchmark's identity


def test_rendered_people_have_faces_dlib_finds_at_the_tiny_size():
    from faces import DlibFaceEncoder

    world = people.PeopleWorld(toy.ToyWorld("cpu", seed=11))
    videos, captions, _ = world.batch(12, frames=3, size=128)                  # [12, 3, 3, 128, 128]
    frames = toy.to_uint8(videos).reshape(-1, 128, 128, 3)                     # 36 frames
    encoder = DlibFaceEncoder()
    rate = np.mean([bool(encoder.find_faces(f)) for f in frames])
    assert rate >= 0.7, f"dlib finds a face in only {rate:.2f} of rendered frames"  # measured: 0.86 on 12 × 9 frames
    assert all(" person" in c for c in captions)


def test_a_person_walks_the_way_the_caption_says_and_is_captioned_by_what_moves():
    world = people.PeopleWorld(toy.ToyWorld("cpu", seed=0), person_share=1.0, camera_share=0.0)
    videos, captions, motions = world.batch(10, frames=9, size=128)
    for video, text, name in zip(toy.to_uint8(videos), captions, motions):
        assert text.endswith(f"{name}, camera still") and name in people.PERSON_MOTIONS
        if name.startswith("walks"):
            assert flow.follows_caption(name, flow.measure_motion(video)), text


def test_signed_distances_of_the_people_shapes_match_hand_computed_ones():
    X, Y = torch.tensor([3.0, 0.0, 1.0, 0.5]), torch.tensor([4.0, 0.5, 0.0, 2.0])
    circle = people.ellipse(X, Y, 0.0, 0.0, 2.0, 2.0)                         # exact for a circle: |p| − r
    assert torch.allclose(circle, torch.tensor([3.0, -1.5, -1.0, 4.25 ** 0.5 - 2.0]), atol=1e-5)
    # a segment (0,0)-(2,0) of radius 0.5: above its middle, beyond its end, on it
    seg = people.capsule(torch.tensor([1.0, 3.0, 1.0]), torch.tensor([2.0, 0.0, 0.0]), 0.0, 0.0, 2.0, 0.0, 0.5)
    assert torch.allclose(seg, torch.tensor([1.5, 0.5, -0.5]), atol=1e-5)
    # a thin ellipse's edge stays thin: 0.4 to the side of a 0.2 × 0.012 mouth is far outside
    assert people.ellipse(torch.tensor(0.6), torch.tensor(0.0), 0.0, 0.0, 0.2, 0.012) > 0.39


def test_latent_calibration_keeps_reconstructions_and_standardizes_latents():
    pipe = tiny.build_tiny_pipeline("tiny", pretrained=False)
    model = VideoModel(pipe, "wan", DEFAULTS["tiny"], "tiny")
    world = toy.ToyWorld("cpu", seed=0)
    args = pt.parse_args(["--device", "cpu", "--size", "32", "--frames", "5", "--vae-batch", "8"])
    x, _, _ = world.batch(2, 5, 32)
    with torch.no_grad():
        before = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample
        pt.calibrate_latents(pipe.vae, world, args, torch.autocast("cpu", enabled=False), lambda *a: None)
        after = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample
        z = model.normalize_latents(pipe.vae.encode(world.batch(16, 5, 32)[0]).latent_dist.mode())
    assert torch.allclose(before, after, atol=1e-4)
    assert abs(z.mean().item()) < 0.2 and 0.8 < z.std().item() < 1.2


def test_pretraining_runs_a_few_steps_on_cpu_and_tiny_loads_what_it_writes(tmp_path):
    pt.main(["--device", "cpu", "--out", str(tmp_path), "--size", "32", "--frames", "5", "--long-frames", "9",
             "--vae-steps", "2", "--vae-batch", "2", "--vae-image-batch", "2", "--pool-videos", "8",
             "--dit-steps", "3", "--dit-batch", "4", "--budget-s", "120", "--reserve-s", "1"])
    names = {p.name for p in tmp_path.glob("*.safetensors")}
    assert names == {"vae.safetensors", "transformer.safetensors", "text_encoder.safetensors"}
    assert sum(p.stat().st_size for p in tmp_path.glob("*.safetensors")) <= 20e6
    pipe = tiny.build_tiny_pipeline("tiny", pretrained=False)
    tiny.load_pretrained_weights(pipe, str(tmp_path))  # strict: every key of every component
    log = (tmp_path / "pretrain_log.jsonl").read_text()
    assert '"vae_end"' in log and '"transformer_end"' in log


def test_weights_ship_and_tiny_loads_them():
    assert {p.name for p in SHIPPED.glob("*.safetensors")} == {"vae.safetensors", "transformer.safetensors",
                                                               "text_encoder.safetensors"}
    assert sum(p.stat().st_size for p in SHIPPED.glob("*.safetensors")) <= 20e6
    shipped, random = (tiny.build_tiny_pipeline("tiny", pretrained=p).transformer for p in (True, False))
    assert not torch.equal(shipped.proj_out.weight, random.proj_out.weight)


def test_shipped_base_moves_when_its_caption_says_so_and_holds_still_otherwise():
    from rewards import dynamic_reward

    model = VideoModel.from_pretrained("tiny")
    moving = ["a cat, camera pans left", "a rocket, camera tilts up", "a horse, handheld camera shakes"]
    still = ["a photo of a cat", "a photo of a rocket", "a photo of a horse"]
    videos, _ = model.sample(moving + still, seed=0, steps=12)                 # [6, 9, 128, 128, 3]
    r_dyn = np.array([dynamic_reward(v, model.defaults.fps).reward for v in videos])
    assert r_dyn[:3].mean() > 2 * r_dyn[3:].mean(), r_dyn  # first base: 10.5 vs 1.9 px; people base (base_check.py): 9.1 vs 1.05


def test_shipped_base_moves_in_the_direction_its_caption_names():
    model = VideoModel.from_pretrained("tiny")
    prompts = {"a cat, camera pans left": ("dx", 1), "a cat, camera pans right": ("dx", -1),
               "a person walks to the left, camera still": ("moving_dx", -1),
               "a person walks to the right, camera still": ("moving_dx", 1)}
    videos, _ = model.sample(list(prompts), seed=0, steps=12)                 # [4, 9, 128, 128, 3]
    for (prompt, (key, sign)), video in zip(prompts.items(), videos):
        measured = flow.measure_motion(video)[key]
        assert measured * sign > 0.5, (prompt, measured)  # measured (toyworld/base_check.py): |flow| 0.9-2.1 px/frame


def test_shipped_base_draws_a_person_whose_face_the_id_reward_finds():
    # Counted over 8 seeds, not asked of each of 2: at 128 px the ID reward finds the toy person's face
    # through MTCNN, whose confidences sit near its 0.8 floor in many frames (seed 3: 0.783, seed 5: 0.824),
    # so another machine's float rounding can add or remove a video's only face (issue 29: [3, 0] faces for
    # seeds 1 and 3 on a 2-core AMD EPYC where this test was written with "4 and 3"). Measured here (AMD EPYC,
    # torch 2.13 CPU): faces in [0, 3, 0, 0, 0, 3, 4, 6] of 9 frames for seeds 0-7, the same with 1-4 torch
    # threads, OMP_NUM_THREADS=1, ATen and MKL/oneDNN held to AVX2 or no vector code; 11 of 24 videos over seeds 0-23.
    from faces import DlibFaceEncoder

    model = VideoModel.from_pretrained("tiny")
    videos, _ = model.sample(["a sks person, camera zooms in"] * 8, seed=list(range(8)))  # [8, 9, 128, 128, 3]
    encoder = DlibFaceEncoder()  # the ID reward's search: HOG, then MTCNN, then the neighbouring frames
    found = [sum(bool(faces) for faces in encoder.find_video_faces(video)) for video in videos]
    assert sum(n > 0 for n in found) >= 2 and sum(found) >= 6, found  # measured: 4 videos, 16 of 72 frames


def test_shipped_vae_reconstructs_a_face_it_never_saw_better_than_random_weights():
    from skimage import data

    from faces import DlibFaceEncoder
    from sampling import crop_around_face, static_video

    photo = data.astronaut()
    encoder = DlibFaceEncoder()
    face = max(encoder.find_faces(photo, thorough=True), key=lambda f: f.area)
    # framed as the tiny preset frames references (train.py: face_framing 1.5). Measured: the people-tuned VAE
    # (run 3) finds the face in 9 of 9 frames at 1.5 and 6 of 9 at 2.0 face heights; mean error 0.041 vs 0.045 before.
    clip = static_video(crop_around_face(photo, face.box, 1.0, 1.5), 9, 128, 128, jitter=0)[None]  # [1, 9, 128, 128, 3]
    errors = {}
    for name, pretrained in (("shipped", True), ("random", False)):
        model = VideoModel(tiny.build_tiny_pipeline("tiny", pretrained=pretrained), "wan", DEFAULTS["tiny"], "tiny")
        recon = model.decode(model.encode_video(clip))
        errors[name] = np.abs(recon.astype(float) - clip.astype(float)).mean() / 255
        if pretrained:
            assert encoder.find_faces(recon[0, 4]), "dlib finds no face in the shipped VAE's reconstruction"
    assert errors["shipped"] < 0.5 * errors["random"], errors


def test_benchmark_refuses_a_photo_that_does_not_exist(tmp_path):
    import pytest

    from toyworld import benchmark

    with pytest.raises(SystemExit, match="no such file"):
        benchmark.main(["--photo", str(tmp_path / "nobody.jpg"), "--out", str(tmp_path / "out")])


def _seed_run(folder: Path) -> Path:
    """A finished benchmark run as toyworld/sweep.py reads it: config, state, log, LoRA, repository, caches."""
    import json

    import train
    from toyworld import benchmark

    run = folder / "astronaut"
    for sub in ("repository/videos", "identity_lora", "checkpoints/identity/step-000010", "eval", "eval_people"):
        (run / sub).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "astronaut.png").write_bytes(b"photo")
    (folder / "base_check.json").write_text("{}")
    config = vars(train.parse_args(benchmark.train_argv(folder / "refs" / "astronaut.png", run, [])))
    (run / "config.json").write_text(json.dumps(config))
    (run / "state.json").write_text(json.dumps({"done": ["identity", "dpo_identity_round0"], "latest": {
        "identity": "checkpoints/identity/step-000010", "dpo_identity_round0": "checkpoints/x"}}))
    (run / "log.jsonl").write_text('{"stage": "identity", "step": 0}\n{"stage": "dpo_identity_round0", "step": 0}\n')
    for variant in ("base", "identity_stage", "MagicID"):
        key = {"references": [str(folder / "refs" / "astronaut.png")], "adapter": variant}
        (run / "eval" / f"{variant}_p0_s0.json").write_text(json.dumps({"key": key, "row": {"r_dyn": 1.0}}))
        (run / "eval" / f"{variant}_p0_s0.png").write_bytes(b"sheet")
    return folder


def test_sweep_refuses_flags_that_would_change_the_copied_identity_stage(tmp_path):
    import pytest

    from toyworld import sweep

    seed = _seed_run(tmp_path / "seed")
    sweep.check_reusable(seed, ["astronaut"], ["--sft-weight=10", "--rounds=2", "--videos-per-prompt=8"])
    for flags, changed in ((["--identity-steps=900"], "identity_steps"), (["--lr", "1e-3"], "'lr'"),
                           (["--eval-seeds=2"], "eval_seeds")):
        with pytest.raises(SystemExit, match=changed):
            sweep.check_reusable(seed, ["astronaut"], flags)


def test_sweep_copies_the_identity_stage_and_the_base_and_identity_rows_pointing_at_the_copied_photo(tmp_path):
    import json

    from toyworld import sweep

    seed = _seed_run(tmp_path / "seed")
    sweep.copy_seed(seed, tmp_path / "k8", "astronaut")
    run = tmp_path / "k8" / "astronaut"
    assert json.loads((run / "state.json").read_text()) == {
        "done": ["identity"], "latest": {"identity": "checkpoints/identity/step-000010"}}   # DPO runs again
    assert [json.loads(line)["stage"] for line in (run / "log.jsonl").read_text().splitlines()] == ["identity"]
    assert (run / "checkpoints/identity/step-000010").is_dir() and (run / "identity_lora").is_dir()
    assert sorted(p.name for p in (run / "eval").iterdir()) == [   # the report shows the contact sheets too
        "base_p0_s0.json", "base_p0_s0.png", "identity_stage_p0_s0.json", "identity_stage_p0_s0.png"]
    key = json.loads((run / "eval" / "base_p0_s0.json").read_text())["key"]
    assert key == {"references": [str(tmp_path / "k8" / "refs" / "astronaut.png")], "adapter": "base"}
    assert (tmp_path / "k8" / "refs" / "astronaut.png").read_bytes() == b"photo"
