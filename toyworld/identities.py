"""toyworld/identities.py — a population of procedural identities: who a person is, drawn from a seed.

MagicID's claims are about keeping *one* person across videos nobody tuned on. people.py draws nobody in
particular (a fresh random look per video); here a look is a function of an identity seed, and everything
else is drawn per video:

  identity(seed)   face outline and jaw, cheeks, eye spacing / height / size / opening / tilt / colour, brows
                   (thickness, height, arch, tilt), nose (length, width), mouth (width, height, lips), ears,
                   skin tone, hair style and colour, facial hair, a mark, glasses        (np.random, seeded)
  nuisance(video)  head pose and its motion, expression (smile, open mouth), lighting (gain, colour,
                   side light), framing (head-and-shoulders or medium shot, position), clothes, background,
                   camera motion                                                           (the world's rng)

Seeds below HELDOUT_FROM (1,000,000) may appear in pretraining; seeds from HELDOUT_FROM up are held out:
PopulationWorld, the pretraining data generator, refuses them (check_pretraining_seed), and the benchmark
draws its identities only from them (heldout_protocol.json). Captions name attributes and motion, never
the identity: "a blond person with glasses nods, camera still".

Framing at 128 px: head-and-shoulders shots put the head at 58-83 px tall, medium shots at 46-58 px
(the head's half-height is `scale` canvas px; output height = 2·scale / (2·half) · size).

Exports: HELDOUT_FROM, GEOMETRY, IDENTITY_MOTIONS, HeldOutIdentityError, check_pretraining_seed, identity,
PopulationWorld, render_identity_videos, face_boxes, reference_stills, caption.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from toyworld import people, world as toy  # noqa: E402

HELDOUT_FROM = 1_000_000
PERSON_ONLY = ("turns their head", "nods", "talks", "smiles", "sways", "walks to the left", "walks to the right",
               "comes closer", "waves")
CAMERA_ONLY = ("camera pans left", "camera pans right", "camera zooms in", "camera zooms out",
               "camera tilts up", "camera tilts down")
IDENTITY_MOTIONS = PERSON_ONLY + CAMERA_ONLY + ("still",)
SHOTS = {"head-and-shoulders": (0.45, 0.65), "medium": (0.36, 0.45)}  # head half-height / view half-side
HAIR_STYLES = ("short", "long", "bald")


class HeldOutIdentityError(ValueError):
    """A held-out identity seed reached the pretraining data generator."""


def check_pretraining_seed(seed: int) -> int:
    if not 0 <= seed < HELDOUT_FROM:
        raise HeldOutIdentityError(f"identity seed {seed} is held out (seeds >= {HELDOUT_FROM:,} are the benchmark's) "
                                   f"or negative: the pretraining data may only show seeds 0..{HELDOUT_FROM - 1:,}")
    return seed


# The face's geometric features and their ranges (head half-heights; eye_size, eye_open, lip_size, ear_size are
# scales): identity() draws each uniformly in its range; toyworld/identity_spread.py widens them.
GEOMETRY = {"width": (0.62, 0.92), "jaw": (0.0, 0.5), "eye_gap": (0.25, 0.40), "eye_size": (0.8, 1.3),
            "eye_open": (0.6, 1.4), "eye_y": (-0.2, -0.04), "nose_length": (0.16, 0.38), "nose_width": (0.05, 0.1),
            "mouth_width": (0.18, 0.36), "mouth_y": (0.5, 0.68), "lip_size": (0.7, 1.4), "brow": (0.025, 0.08),
            "brow_lift": (0.17, 0.27), "ear_size": (0.8, 1.25), "cheek_x": (0.45, 0.65)}


def identity(seed: int) -> dict:
    """The identity of `seed`: the look people.render_people draws (its keys and FEATURE_DEFAULTS'), plus
    'seed', 'hair_style' and 'facial_hair' for captions. Lengths are in head half-heights."""
    r = np.random.default_rng([seed, 20261205])
    tone = r.uniform(0, len(people.SKIN) - 1)                                  # continuous, light .. dark
    lo = int(tone)
    skin = people.SKIN[lo] * (1 - (tone - lo)) + people.SKIN[min(lo + 1, len(people.SKIN) - 1)] * (tone - lo)
    hair_name = list(people.HAIR)[r.integers(len(people.HAIR))]
    hair = np.clip(np.array(people.HAIR[hair_name]) * r.uniform(0.75, 1.25) + r.uniform(-0.04, 0.04, 3), 0, 1)
    contrast = hair.mean() - skin.mean()  # the head's outline must show at 128 px: hair at least 0.2 off the skin
    if abs(contrast) < 0.2:
        hair = np.clip(hair + (0.2 - abs(contrast)) * (1 if contrast >= 0 and skin.mean() < 0.75 else -1), 0, 1)
    style = HAIR_STYLES[r.choice(3, p=[0.55, 0.35, 0.10])]
    beard, moustache = r.random() < 0.18, r.random() < 0.22

    def shape(feature):   # one GEOMETRY feature, drawn where it stands below (the draws' order is the identity)
        return r.uniform(*GEOMETRY[feature])

    return {
        "seed": seed, "hair_name": hair_name, "hair_style": style,
        "facial_hair": "a beard" if beard else "a moustache" if moustache else None,
        "skin": np.clip(skin * r.uniform(0.93, 1.07, 3), 0, 1),
        "hair": hair,
        "long_hair": style == "long", "bald": style == "bald",
        "width": shape("width"), "jaw": shape("jaw"),
        "eye_gap": shape("eye_gap"), "eye_size": shape("eye_size"), "eye_open": shape("eye_open"),
        "eye_y": shape("eye_y"), "eye_tilt": r.uniform(-0.03, 0.03),
        "iris": np.clip(np.array(people.IRIS[r.integers(len(people.IRIS))]) * r.uniform(0.7, 1.3), 0, 1),
        "brow": shape("brow"), "brow_lift": shape("brow_lift"), "brow_arch": r.uniform(0.0, 0.14),
        "brow_tilt": r.uniform(-0.15, 0.15), "brow_dark": float(skin.mean() < 0.5),  # brows show on dark skin
        "nose_length": shape("nose_length"), "nose_width": shape("nose_width"),
        "mouth_width": shape("mouth_width"), "mouth_y": shape("mouth_y"), "lip_size": shape("lip_size"),
        "lips": np.clip(np.array([0.65, 0.30, 0.30]) * r.uniform(0.65, 1.15) + r.uniform(-0.05, 0.05, 3), 0, 1),
        "ear_size": shape("ear_size"), "cheek_x": shape("cheek_x"), "blush": r.uniform(0, 1) ** 2,
        "beard": float(beard), "moustache": float(moustache or beard),
        "mole": float(r.random() < 0.35), "mole_x": r.uniform(-0.45, 0.45), "mole_y": r.uniform(-0.05, 0.5),
        "glasses": r.random() < 0.15, "hat": False, "hat_color": np.zeros(3),
        "shirt": np.zeros(3),                                                  # clothes: per video (nuisance)
    }


class PopulationWorld:
    """The pretraining data generator: captioned videos of identities drawn from seeds 0..HELDOUT_FROM−1
    (never a held-out one), each video with its own nuisance. Same interface as people.PeopleWorld:
    batch(n, frames, size) -> videos [n, 3, F, H, W] in [-1, 1], captions, motions."""

    def __init__(self, world: "toy.ToyWorld", population: int = HELDOUT_FROM):
        self.world, self.rng = world, world.rng
        self.population = check_pretraining_seed(population - 1) + 1         # seeds 0..population-1

    def batch(self, n: int, frames: int = 9, size: int = 128, with_faces: bool = False):
        return self.batch_of(self.rng.integers(0, self.population, n).tolist(), frames, size, with_faces=with_faces)

    def batch_of(self, seeds: list[int], frames: int = 9, size: int = 128, motions: list[str] | None = None,
                 with_faces: bool = False):
        """Videos of the given identity seeds; a held-out seed is refused before anything is drawn.
        with_faces: also each frame's head box (face_boxes), a 4th output."""
        for seed in seeds:
            check_pretraining_seed(seed)
        return render_identity_videos(seeds, self.world, frames, size, motions, with_faces=with_faces)


def render_identity_videos(seeds: list[int], world: "toy.ToyWorld", frames: int = 9, size: int = 128,
                           motions: list[str] | None = None, shots: list[str] | None = None, with_faces: bool = False,
                           look_of=None):
    """One video per identity seed (any seed: the benchmark's held-out ones too), nuisance from world.rng.
    motions / shots: per video (default: drawn). -> videos [n, 3, F, size, size] in [-1, 1], captions, motions
    (and, with_faces, the head boxes [n, F, 3] of face_boxes). look_of(seed) -> look: another way to draw the
    identities (default: identity; toyworld/identity_spread.py stretches them)."""
    r, n = world.rng, len(seeds)
    motions = motions or [IDENTITY_MOTIONS[i] for i in r.integers(0, len(IDENTITY_MOTIONS), n)]
    shots = shots or [list(SHOTS)[i] for i in r.choice(2, n, p=[0.7, 0.3])]
    looks = [{**(look_of or identity)(s), "shirt": r.uniform(0.05, 0.95, 3)} for s in seeds]   # clothes: nuisance
    cams = np.stack([toy.camera_path(m if m in CAMERA_ONLY else "still", frames, size, r) for m in motions])
    poses = np.stack([pose_path(m, shot, cam, size, r) for m, shot, cam in zip(motions, shots, cams)])  # [n, F, 8]
    videos = people.render_people(world.backgrounds(n), torch.from_numpy(cams).float(),
                                  torch.from_numpy(poses).float(), looks, size)
    videos = relight(videos, r)
    captions = [caption(look, m, r) for look, m in zip(looks, motions)]
    if with_faces:
        return videos, captions, motions, face_boxes(cams, poses, size)
    return videos, captions, motions


def face_boxes(cams: np.ndarray, poses: np.ndarray, size: int) -> np.ndarray:
    """Where each frame shows the head, in output px: cams [n, F, 3] (cx, cy, half: canvas px), poses [n, F, ≥3]
    (x, y, scale: the head's centre and half-height, canvas px) -> [n, F, 3] (centre x, centre y, half-height).
    A canvas point p lands at output px (p − c)/half · size/2 + size/2 (people.render_people's X, Y)."""
    cx, cy, half = cams[..., 0], cams[..., 1], cams[..., 2]
    to_px = size / 2 / half                                                    # output px per canvas px, [n, F]
    return np.stack([(poses[..., 0] - cx) * to_px + size / 2, (poses[..., 1] - cy) * to_px + size / 2,
                     poses[..., 2] * to_px], axis=-1)


def pose_path(motion: str, shot: str, cams: np.ndarray, size: int, r) -> np.ndarray:
    """people.person_path's pose [F, 7] for the motions it knows, framed as `shot`, plus a smile column
    (POSE + "smile": [F, 8]) and this file's motions: smiling (the smile grows), swaying (side to side)."""
    known = motion if motion in people.PERSON_MOTIONS else None
    pose = people.person_path(known, cams, size, r)
    mid_half = cams[len(cams) // 2, 2]
    # The shot's head size at the smallest frame; a person coming closer starts in a medium shot and ends
    # near a head-and-shoulders one (3-6 % a frame: ×1.27-1.59 over 9 frames).
    low, high = SHOTS["medium" if motion == "comes closer" else shot]
    pose[:, 2] *= r.uniform(low, high) * mid_half / pose[:, 2].min()
    pose[:, 3] += r.uniform(-0.08, 0.08)                                          # head pose: a bit more varied
    f = np.linspace(0, 1, len(pose))
    smile = np.full(len(pose), r.uniform(0, 0.4) if r.random() < 0.5 else 0.0)  # expression of a still face
    if motion == "smiles":
        smile = np.clip(f * r.uniform(1.2, 2.0) - 0.1, 0, 1)
    elif motion == "sways":
        px = 2 * mid_half / size
        pose[:, 0] += r.uniform(3, 6) * px * np.sin(2 * math.pi * f * r.uniform(0.8, 1.2) + r.uniform(0, 6.3))
    return np.concatenate([pose, smile[:, None]], axis=1)


def relight(videos: torch.Tensor, r) -> torch.Tensor:
    """Lighting per video: a colour gain and a light from one side (brightness ramps across the frame)."""
    n, _, _, _, W = videos.shape
    gain = torch.from_numpy(r.uniform(0.85, 1.1, (n, 1)) * r.uniform(0.95, 1.05, (n, 3))).float()  # [n, 3]
    side = torch.from_numpy(r.uniform(-0.15, 0.15, n)).float()                                        # [n]
    ramp = torch.linspace(-1, 1, W)                                                                 # [W]
    light = gain.view(n, 3, 1, 1, 1) * (1 + side.view(n, 1, 1, 1, 1) * ramp.view(1, 1, 1, 1, W))
    return ((videos.add(1).div(2) * light.to(videos)).clamp(0, 1)).mul(2).sub(1)


def caption(look: dict, motion: str, r) -> str:
    """By attributes and motion, never the identity: "a blond person with glasses nods, camera still"."""
    words = []
    if look["hair_style"] == "bald" and r.random() < 0.5:
        words.append("bald")
    elif look["hair_style"] != "bald" and r.random() < 0.5:
        words.append(look["hair_name"])
    if r.random() < 0.25:  # a made-up word before "person" still means a person (as "a sks person" must)
        words.insert(0, people.made_up_word(r))
    subject = "a " + " ".join(words + ["person"])
    extras = [x for x in ("glasses" if look["glasses"] else None, look["facial_hair"]) if x and r.random() < 0.6]
    if extras:
        subject += " with " + " and ".join(extras)
    if motion in PERSON_ONLY:
        return f"{subject} {motion}, camera still"
    if motion in CAMERA_ONLY:
        return f"{subject}, {motion}"
    return toy.STILL_CAPTIONS[r.integers(len(toy.STILL_CAPTIONS))].format(subject)


def reference_stills(seed: int, k: int = 4, size: int = 256, accept=None, rng_seed: int = 0) -> np.ndarray:
    """K reference photos of identity `seed` as a user would bring them: head-and-shoulders stills with
    varied head pose and expression, lighting, clothes and background. accept(image) -> bool: keep only
    stills it accepts (a user picks photos where the face shows: the benchmark passes a face detector);
    up to 4·K candidates are drawn. -> uint8 [K, size, size, 3]."""
    world = toy.ToyWorld("cpu", seed=[rng_seed, seed])
    motions = [("still", "turns their head", "smiles", "nods")[i % 4] for i in range(4 * k)]  # the first: frontal
    kept = []
    for start in range(0, 4 * k, k):  # k candidates at a time, until k are accepted
        video, _, _ = render_identity_videos([seed] * k, world, 3, size, motions[start:start + k],
                                             ["head-and-shoulders"] * k)
        kept += [still for still in toy.to_uint8(video)[:, 2] if accept is None or accept(still)]  # frame 2 of each
        if len(kept) >= k:
            return np.stack(kept[:k])                                          # [K, size, size, 3]
    raise RuntimeError(f"identity {seed}: only {len(kept)} of {4 * k} reference stills were accepted")
