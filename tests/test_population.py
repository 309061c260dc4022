"""The identity population (toyworld/identities.py, issue 26): held-out seeds never reach pretraining, an identity
is its seed, captions never name it, faces are big enough, the project's r_id tells identities apart (the gate),
the population base's preset and its pretraining run, and the benchmark's protocol and --procedural path work."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toyworld import identities, world as toy  # noqa: E402

GATE_SEEDS = [1_000_200, 1_000_201, 1_000_202, 1_000_203, 1_000_204]  # fixed; disjoint from the protocol's


def test_the_pretraining_generator_refuses_held_out_identity_seeds():
    population = identities.PopulationWorld(toy.ToyWorld("cpu", seed=0))
    with pytest.raises(identities.HeldOutIdentityError, match="1000000"):
        population.batch_of([3, identities.HELDOUT_FROM], frames=2, size=32)
    with pytest.raises(identities.HeldOutIdentityError):
        population.batch_of([-1], frames=2, size=32)
    with pytest.raises(identities.HeldOutIdentityError):  # a population that would reach into the held-out seeds
        identities.PopulationWorld(toy.ToyWorld("cpu", seed=0), population=identities.HELDOUT_FROM + 1)
    videos, captions, _ = population.batch_of([identities.HELDOUT_FROM - 1], frames=2, size=32)
    assert videos.shape == (1, 3, 2, 32, 32) and len(captions) == 1


def test_an_identity_is_its_seed_and_each_video_draws_its_own_nuisance():
    a, b = identities.identity(1_000_123), identities.identity(1_000_123)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    protocol_person = identities.identity(1_000_003)   # pinned: the protocol's results are of these people
    assert [protocol_person[k] for k in identities.GEOMETRY] == pytest.approx(
        [0.803553983336, 0.39466198715, 0.336693904353, 0.985268527769, 1.026540562636, -0.187904537739, 0.16075300773,
         0.085473289133, 0.188922966076, 0.567385047721, 1.034070069579, 0.049348631453, 0.25274273759, 0.921189727004,
         0.458454765154], abs=1e-11)
    assert protocol_person["mole_y"] == pytest.approx(0.05837007859938592, abs=1e-12)   # the draws after them too
    other = identities.identity(1_000_124)
    assert any(not np.array_equal(a[k], other[k]) for k in ("skin", "width", "eye_gap", "nose_length"))
    videos, _, _ = identities.render_identity_videos([1_000_123] * 2, toy.ToyWorld("cpu", seed=1), 3, 64,
                                                     ["still", "still"], ["head-and-shoulders"] * 2)
    assert (videos[0] - videos[1]).abs().mean() > 0.05   # same person, other background, clothes, light, pose


def test_captions_name_attributes_and_motion_never_the_identity():
    seeds = list(range(1_000_300, 1_000_316))
    _, captions, motions = identities.render_identity_videos(seeds, toy.ToyWorld("cpu", seed=2), 2, 32)
    for seed, text, motion in zip(seeds, captions, motions):
        assert str(seed) not in text and str(seed % 1000) not in text.split()
        assert "person" in text
        if motion in identities.PERSON_ONLY:
            assert text.endswith(f"{motion}, camera still")
        elif motion in identities.CAMERA_ONLY:
            assert text.endswith(f", {motion}")
    look = {**identities.identity(0), "hair_name": "blond", "hair_style": "short", "glasses": True,
            "facial_hair": None}
    texts = {identities.caption(look, "nods", np.random.default_rng(i)) for i in range(40)}
    assert "a blond person with glasses nods, camera still" in texts


def test_heads_are_at_least_45_px_tall_at_128_px_in_both_shots():
    """Head height in output px = 2·scale / (2·half) · 128 (scale: head half-height, half: view half-side)."""
    rng = np.random.default_rng(0)
    for shot in identities.SHOTS:
        for motion in ("still", "comes closer", "walks to the left", "sways") * 10:
            cams = toy.camera_path("still", 9, 128, rng)
            pose = identities.pose_path(motion, shot, cams, 128, rng)          # [F, 8]
            assert pose.shape == (9, 8)
            assert (2 * pose[:, 2] / (2 * cams[:, 2]) * 128).min() >= 45, (shot, motion)


def test_auc_of_a_hand_worked_example():
    from toyworld.identity_gate import auc

    # pairs (same, diff): .9>.85 .9>.1 .8<.85 .8>.1 -> 3 of 4; a tie counts half
    assert auc([0.9, 0.8], [0.85, 0.1]) == 0.75
    assert auc([0.5], [0.5, 0.4]) == 0.75


def test_the_id_reward_tells_held_out_identities_apart_and_finds_their_faces():
    """The gate on a fixed set (5 held-out identities × 2 videos across pose and expression; 12 × 3 in
    toyworld/README.md): the project's r_id, as train.py scores, AUC ≥ 0.97 and face-hit ≥ 0.95."""
    from toyworld.identity_gate import GATE_AUC, GATE_FACE_HIT, measure_gate

    result = measure_gate(GATE_SEEDS, videos_per_identity=2, stills=3)
    assert result["auc"] >= GATE_AUC, result["auc"]
    assert result["face_hit_rate"] >= GATE_FACE_HIT, result["face_hit_rate"]
    assert result["face_box_height_px"]["min"] >= 40     # dlib's box is brows-to-chin: smaller than the head


def test_the_population_preset_makes_a_rank_64_attention_lora_under_5_percent_of_the_transformer():
    import tiny
    from model import VideoModel

    pipe = tiny.build_tiny_pipeline("tiny-toyworld", pretrained=False)
    model = VideoModel(pipe, "wan", __import__("model").DEFAULTS["tiny"], "tiny-toyworld")
    base = sum(p.numel() for p in model.transformer.parameters())
    model.add_lora(64, "attention")
    lora = sum(p.numel() for n, p in model.transformer.named_parameters() if "lora_" in n)
    assert lora == 3 * 8 * 64 * (256 + 256)           # 3 blocks × (self + cross: q, k, v, out) × r·(in + out)
    assert lora / base <= 0.05, lora / base            # 786,432 / 16,357,440 = 4.8 %
    assert base * 2 <= 40e6                            # its bf16 safetensors within 40 MB


def test_population_pretraining_runs_a_few_steps_on_cpu_and_the_preset_loads_it(tmp_path):
    import tiny
    from safetensors.torch import load_file

    from toyworld import pretrain

    pretrain.main(["--model", "tiny-toyworld", "--device", "cpu", "--out", str(tmp_path), "--budget-s", "300",
                   "--pool-videos", "4", "--dit-steps", "2", "--dit-batch", "2", "--reserve-s", "1"])
    files = {p.name: p.stat().st_size for p in tmp_path.glob("*.safetensors")}
    assert set(files) == {"transformer.safetensors", "text_encoder.safetensors"}   # the VAE is weights/tiny's
    assert sum(files.values()) <= 40e6, files
    state = load_file(str(tmp_path / "transformer.safetensors"))
    assert next(iter(state.values())).dtype == torch.bfloat16
    events = [json.loads(line)["event"] for line in (tmp_path / "pretrain_log.jsonl").read_text().splitlines()]
    assert "transformer_end" in events and events[-1] == "done"
    setup = next(json.loads(line) for line in (tmp_path / "pretrain_log.jsonl").read_text().splitlines())
    assert setup["args"]["population"] and setup["args"]["vae_steps"] == 0
    pipe = tiny.build_tiny_pipeline("tiny-toyworld", pretrained=False)
    tiny.load_pretrained_weights(pipe, str(tmp_path))
    key = next(iter(state))
    assert torch.equal(pipe.transformer.state_dict()[key], state[key].float())


def test_the_protocol_fixes_held_out_identities_prompts_and_seeds_and_the_benchmark_reads_it(tmp_path):
    from toyworld import benchmark, protocol

    fixed = protocol.load_protocol()
    assert len(fixed["identities"]) >= 6 and min(fixed["identities"]) >= identities.HELDOUT_FROM
    assert not set(fixed["identities"]) & set(GATE_SEEDS + list(range(1_000_500, 1_000_512)))  # never looked at
    prompts = [line for line in Path(fixed["heldout_prompts"]).read_text().splitlines() if line and line[0] != "#"]
    assert len(prompts) >= 4 and fixed["eval_seeds"] >= 3
    assert not set(prompts) & set(Path(fixed["train_prompts"]).read_text().splitlines())
    setup = benchmark.population_setup(protocol.PROTOCOL_FILE, "tiny")
    argv = benchmark.train_argv(Path("ref"), Path("run"), [], "cpu", setup)
    assert argv[argv.index("--id-backend") + 1] == "toyface"
    assert argv[argv.index("--heldout-prompts") + 1] == fixed["heldout_prompts"]
    assert argv[argv.index("--eval-seeds") + 1] == str(fixed["eval_seeds"])
    with pytest.raises(SystemExit, match="held-out identity seed"):
        benchmark.main(["--procedural", "999999", "--model", "tiny", "--out", str(tmp_path), "--no-base-check"])


def test_procedural_writes_reference_stills_and_runs_train_py_end_to_end(tmp_path):
    """--procedural SEED at tiny settings: K stills of the held-out identity in the run folder (each with a
    face the ID reward finds), train.py's whole flow on them, the tables; a second call reuses everything."""
    from PIL import Image

    from faces import make_face_encoder
    from toyworld import benchmark, protocol

    fixed = json.loads(protocol.PROTOCOL_FILE.read_text())
    (tmp_path / "heldout.txt").write_text("{person} nods, camera still\n")
    (tmp_path / "train.txt").write_text("{person} turns their head, camera still\n")
    (tmp_path / "protocol.json").write_text(json.dumps({**fixed, "model": "tiny", "train_prompts": "train.txt",
                                                        "heldout_prompts": "heldout.txt", "eval_seeds": 1,
                                                        "reference_stills": 3, "train_args": []}))
    tiny_run = [f"--train-arg={flag}" for flag in ("--identity-steps=2", "--num-prompts=1", "--videos-per-prompt=2",
                                                    "--static-videos=2", "--dpo-identity-steps=1",
                                                    "--dpo-dynamic-steps=1", "--sample-steps=2", "--eval-prompts=1",
                                                    "--eval-seeds=1")]
    argv = ["--procedural", "1000123", "--protocol-file", str(tmp_path / "protocol.json"), "--out",
            str(tmp_path / "run"), "--no-base-check", *tiny_run]
    results = benchmark.main(argv)
    stills = sorted((tmp_path / "run" / "refs" / "procedural_1000123").glob("still_*.png"))
    assert len(stills) == 3
    assert results["setup"]["id_backend"] == "toyface"  # the population world's r_id (benchmark.ID_BACKEND_POPULATION)
    encoder = make_face_encoder("toyface")
    assert all(encoder.find_faces(np.asarray(Image.open(p).convert("RGB")), thorough=True) for p in stills)
    assert results["identities"] == ["procedural_1000123"] and results["setup"]["model"] == "tiny"
    assert results["table_9"]["MagicID"]["n"] == 1 and "MagicID r_dyn above baseline" in results["claims"]
    assert set(results["paired_9"]) == {"r_dyn", "r_id"}     # MagicID − identity stage on the same video seed
    assert any("paired by identity" in claim for claim in results["claims"])
    assert len(results["identity_fade"]) == 3 and results["paired_long"]["r_dyn"] is not None   # the 17-frame path
    assert any("per video, last third" in claim for claim in results["claims"])
    assert (tmp_path / "run" / "procedural_1000123" / "magicid_lora").is_dir()
    assert "## Claims" in (tmp_path / "run" / "results.md").read_text()
    again = protocol.write_procedural_references(1_000_123, tmp_path / "run" / "refs", 3, encoder)
    assert sorted(again.glob("still_*.png")) == stills       # repeatable: written once, the same seed's stills


def test_face_boxes_match_the_head_the_renderer_paints():
    """identities.face_boxes against the renderer itself: paint the same bald heads in two skin colours on a flat
    background; the topmost pixel that changes is the head's top (centre − half-height) and the row half a
    half-height below it is centred on the box's centre, within 1.5 px (the edges are soft), in every frame."""
    from toyworld import people

    r = np.random.default_rng(5)
    motions = ["walks to the left", "comes closer", "camera pans left", "nods", "turns their head", "sways"]
    shots = ["head-and-shoulders", "medium"] * 3
    cams = np.stack([toy.camera_path(m if m in identities.CAMERA_ONLY else "still", 9, 128, r) for m in motions])
    poses = np.stack([identities.pose_path(m, s, c, 128, r) for m, s, c in zip(motions, shots, cams)])  # [n, F, 8]
    looks = [{**identities.identity(1_000_400 + i), "shirt": np.full(3, 0.5), "bald": True, "long_hair": False}
             for i in range(len(motions))]
    background = torch.full((len(motions), 3, toy.CANVAS, toy.CANVAS), 0.5)
    paint = lambda skin: people.render_people(background, torch.from_numpy(cams).float(), torch.from_numpy(poses).float(),
                                              [{**look, "skin": np.array(skin)} for look in looks], 128)
    changed = ((paint([0.9, 0.2, 0.2]) - paint([0.2, 0.9, 0.2])).abs().amax(1) > 0.3).numpy()   # [n, F, H, W]
    boxes = identities.face_boxes(cams, poses, 128)                                           # [n, F, 3]
    for v in range(len(motions)):
        for f in range(9):
            cx, cy, half = boxes[v, f]
            rows = np.nonzero(changed[v, f].any(1))[0]
            assert abs(rows.min() + 0.5 - (cy - half)) <= 1.5, (motions[v], f, rows.min(), cy - half)
            columns = np.nonzero(changed[v, f, int(cy - 0.5 * half)])[0]
            assert abs((columns.min() + columns.max() + 1) / 2 - cx) <= 1.5, (motions[v], f, columns, cx)


def test_face_latent_mask_by_hand():
    """A head at (64, 64) with half-height 16 px in frame 4 of 9 at 128 px, latents 3 × 16 × 16 (8-px cells, centres
    4 + 8i): cells within 1.25 · 16 = 20 px of the centre are those whose centres are 52, 60, 68, 76 px (offsets
    ±4, ±12; ±20 is not < 20) in both axes: rows and columns 6-9. Frame 4 is in latent frame 1 (frames 1-4), not 2 (5-8)."""
    from toyworld.pretrain import face_latent_mask

    boxes = np.zeros((2, 9, 3))
    boxes[0, 4] = (64, 64, 16)
    mask = face_latent_mask(boxes, (3, 16, 16), 128)
    expected = torch.zeros(2, 3, 16, 16)
    expected[0, 1, 6:10, 6:10] = 1
    assert torch.equal(mask, expected)


def test_identity_spread_stretches_geometry_about_the_middle_and_the_default_look_is_unchanged():
    """toyworld/identity_spread.stretched by hand (x' = m + k·(x − m)), and look_of=identity renders what the default does."""
    from toyworld import identity_spread

    seed = 1_000_650
    look, wide = identities.identity(seed), identity_spread.stretched(seed, 2.0)
    assert wide["nose_length"] == pytest.approx(0.27 + 2.0 * (look["nose_length"] - 0.27))
    assert wide["mouth_y"] == pytest.approx(0.59 + 2.0 * (look["mouth_y"] - 0.59))
    assert np.array_equal(wide["skin"], look["skin"])                                 # colours are not geometry
    default, _, _ = identities.render_identity_videos([seed], toy.ToyWorld("cpu", seed=9), 2, 32)
    same, _, _ = identities.render_identity_videos([seed], toy.ToyWorld("cpu", seed=9), 2, 32, look_of=identities.identity)
    other, _, _ = identities.render_identity_videos([seed], toy.ToyWorld("cpu", seed=9), 2, 32,
                                                    look_of=lambda s: identity_spread.stretched(s, 2.0))
    assert torch.equal(default, same) and not torch.equal(default, other)


def test_the_shipped_population_base_draws_faces_the_toy_detector_finds_and_moves_when_asked():
    # weights/tiny-toyworld/ (33 MB, tracked) at base_check's settings (12 steps, CFG 3), seed 0. Measured: a face in
    # 9 of 9 frames of both person videos, 0 of 9 of the cat's; r_dyn 15.8 px panning vs 1.1 for the still photo.
    import tiny
    from model import VideoModel
    from rewards import dynamic_reward
    from toy_face import ToyFaceEncoder

    assert (Path(tiny.TINY_WEIGHTS_DIR) / "tiny-toyworld" / "transformer.safetensors").is_file()  # not random weights
    model = VideoModel.from_pretrained("tiny-toyworld")
    prompts = ["a person, camera pans left", "a photo of a person", "a photo of a cat"]
    videos, _ = model.sample(prompts, seed=[0, 0, 0], steps=12)
    encoder = ToyFaceEncoder()
    hits = [np.mean([bool(faces) for faces in encoder.find_video_faces(video)]) for video in videos]
    assert hits[0] >= 0.8 and hits[1] >= 0.8 and hits[2] <= 0.2, hits
    r_dyn = [dynamic_reward(video, model.defaults.fps).reward for video in videos]
    assert r_dyn[0] > 4 * r_dyn[1], r_dyn
