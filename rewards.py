"""The three rewards of MagicID (METHOD.md, "Rewards"; paper Sec. 3): numpy videos in, numbers out.

A video is uint8 [F, H, W, 3] RGB. With S the sampled frames, e_f the best face's identity
embedding in frame f and ē = normalize(mean_i e_i) the mean embedding of the N reference photos:

    r_id(v)     = min(1, p/p_min) · 1/|S_face| · Σ_{f∈S_face} cos(e_f, ē)   identity over the frames S_face
                  p = |S_face| / |S| (face presence), p_min = 0.5          with a face; few faces shrink it to 0
    r_dyn(v)    = 1/(F-1) · Σ_f mean(top 5 % of ‖flow(f → f+1)‖)          motion, in px at a 256-px
                                                                          short side (VBench's statistic)
    r_sem(v, c) = 1/|S| · Σ_{f∈S} cos(CLIP_image(f), CLIP_text(c))        prompt, CLIP judge
             or = P(yes) / (P(yes) + P(no)) | S frames, "Does this video   prompt, VLM judge (VQAScore-style,
                  show: c? Answer yes or no."                            the paper's choice); None: no judge

Optical flow is OpenCV's DIS on frames resized to a 256-px short side, so r_dyn is in the same
units at every resolution. For evaluation, dynamic_reward also gives VBench's yes/no "dynamic
degree": frames taken at ~8 fps, a pair moves when its statistic exceeds 6·(min(H, W)/256) px
(= 6 px at our 256-px scale; ×8/fps below 8 fps), the video is dynamic when round(4·n/16) pairs
move. Identity embeddings come from faces.py (dlib or insightface ArcFace; which one ran is in
every score); the reference photos and ē come from faces.load_references. The prompt judge
(judges.py: a CLIP or a VLM from a local folder) names itself in every score.

Exports: identity_reward (identity_from_frames), dynamic_reward, prompt_reward, PromptScore, PromptJudge
(the judge interface), score_videos; the pure math: sample_frame_indices, cosine_to_reference, top_fraction_mean, is_dynamic_vbench.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from faces import FaceEncoder, References

FLOW_SHORT_SIDE = 256   # px; r_dyn is measured at this short side (VBench's 256 normalisation)
TOP_FRACTION = 0.05     # VBench: mean of the largest 5 % flow magnitudes of a frame pair
MIN_FACE_PRESENCE = 0.5 # p_min: r_id is shrunk toward 0 when the face is in fewer of the sampled frames


def identity_reward(video: np.ndarray, refs: References, encoder: FaceEncoder,
                    num_frames: int = 16) -> IdentityScore:
    """r_id on `num_frames` evenly spaced frames (all frames if the video is shorter)."""
    _check_video(video)
    if refs.backend != encoder.name:
        raise ValueError(f"references were embedded with {refs.backend!r} but the encoder is "
                         f"{encoder.name!r}: embeddings of different backends are not comparable; "
                         f"reload the references with this encoder")
    frames = sample_frame_indices(len(video), num_frames)                        # [S]
    emb, found = encoder.embed_faces(video[frames], mean_ref=refs.mean_embedding)  # [S, D], [S]
    per_frame = cosine_to_reference(emb, found, refs.mean_embedding)             # [S]
    return IdentityScore(identity_from_frames(per_frame, found), per_frame, float(found.mean()), frames,
                         encoder.describe(), found)


def identity_from_frames(per_frame: np.ndarray, found: np.ndarray, min_presence: float = MIN_FACE_PRESENCE) -> float:
    """r_id from the sampled frames: per_frame [S] cosines to ē, found [S] bool (a face in the frame).

        r_id = min(1, p / p_min) · mean_{f: found} per_frame[f],   p = mean(found);   r_id = 0 if no face.

    A frame without a found face says nothing about who the person is (a turned head, a hand over the
    face, a wide shot): counting it as cosine 0 read motion as "someone else" (issue 19: AUC 0.63 on
    real generated videos, 0.99 over the frames with a face). So r_id averages the frames with a face,
    and face presence p is kept apart (IdentityScore.face_hit_rate). A video where the face is seen in
    fewer than p_min of the frames carries little evidence of the person: its mean is shrunk linearly
    toward 0 (one face in 16 frames: ×1/8; none: 0), continuously, so pair selection sees no cliff."""
    presence = float(np.mean(found))
    if presence == 0:
        return 0.0
    return float(min(1.0, presence / min_presence) * np.mean(per_frame[found]))


@dataclass
class IdentityScore:
    reward: float           # r_id
    per_frame: np.ndarray   # [S] cosine to ē per sampled frame, 0 where no face
    face_hit_rate: float    # face presence p: fraction of sampled frames with a face
    frames: np.ndarray      # [S] indices of the sampled frames
    backend: str            # which encoder ran
    found: np.ndarray       # [S] bool: a face was found in the sampled frame


def dynamic_reward(video: np.ndarray, fps: float = 16.0, preset: str = "medium") -> DynamicScore:
    """r_dyn from DIS flow between consecutive frames, plus VBench's dynamic-degree decision.
    preset: DIS speed/accuracy, "ultrafast" | "fast" | "medium"."""
    _check_video(video)
    if len(video) < 2:
        raise ValueError("dynamic_reward needs a video of at least 2 frames")
    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
    gray = _frames_for_flow(video)                                    # uint8 [F, h, w], min(h, w) = 256
    per_pair = _pair_statistics(dis, gray)                            # [F-1]
    stride = max(1, round(fps / 8))                                   # VBench samples at ~8 fps
    vbench_pairs = per_pair if stride == 1 else _pair_statistics(dis, gray[::stride])
    is_dynamic = is_dynamic_vbench(vbench_pairs, len(gray[::stride]), fps)
    return DynamicScore(float(per_pair.mean()), per_pair, is_dynamic)


@dataclass
class DynamicScore:
    reward: float          # r_dyn, px at a 256-px short side
    per_pair: np.ndarray   # [F-1] top-5 % mean flow magnitude of each consecutive pair
    is_dynamic: bool       # VBench's dynamic-degree decision (evaluation only)


def prompt_reward(video: np.ndarray, prompt: str | None, judge: PromptJudge | None = None,
                  num_frames: int | None = None) -> PromptScore:
    """r_sem from a prompt judge (load_judge): CLIP's text-frame cosine or a VLM's P(yes); off
    without a judge or a prompt. num_frames: frames the judge sees (None: the judge's own default)."""
    if judge is None:
        return PromptScore(None, False, "off: no prompt judge given (pass --judge clip:DIR for a local CLIP "
                                        "or --judge vlm:DIR for a local VLM)")
    if not prompt:
        return PromptScore(None, False, f"off: no prompt for this video ({judge.name} not run)")
    _check_video(video)
    return judge.score(video, prompt, num_frames or judge.num_frames)


class PromptJudge(Protocol):
    """What prompt_reward needs of a judge (judges.py's ClipScorer and VlmJudge are ones). Defined here, by
    the reward that uses it, so that judges.py imports this file and not the reverse."""
    name: str         # which judge ran, written into every score
    num_frames: int   # frames it looks at by default

    def score(self, video: np.ndarray, prompt: str, num_frames: int) -> PromptScore: ...


@dataclass
class PromptScore:
    reward: float | None   # r_sem, None when off
    enabled: bool
    reason: str            # the judge that ran (its name), or why the reward is off
    per_frame: np.ndarray | None = None  # [S] CLIP: each sampled frame's cosine; VLM: None (one answer)
    answer_mass: float | None = None     # VLM: P(yes) + P(no) over the vocabulary; far below 1: not a yes/no answer


def score_videos(videos, prompts, refs: References, encoder: FaceEncoder,
                 judge: PromptJudge | None = None, fps: float = 16.0, num_frames: int = 16,
                 progress: bool = True) -> list[dict]:
    """All three rewards for many videos (an array [B, F, H, W, 3] or an iterable of [F, H, W, 3]),
    with a progress bar; the models passed in are reused for every video. prompts: a list of
    strings (or None, then r_sem is off); judge: load_judge's (None: r_sem off). One dict of plain
    numbers per video; r_sem_status names the judge that ran, or why r_sem is off."""
    from tqdm import tqdm

    total = len(videos) if hasattr(videos, "__len__") else None
    prompts = [None] * total if prompts is None and total is not None else prompts
    if prompts is None:
        raise ValueError("score_videos: give prompts (or pass videos as a list so None can be expanded)")
    if total is not None and len(prompts) != total:
        raise ValueError(f"score_videos: {total} videos but {len(prompts)} prompts")
    rows = []
    for video, prompt in tqdm(zip(videos, prompts), total=total, disable=not progress,
                              desc="rewards", unit="video"):
        ident = identity_reward(video, refs, encoder, num_frames)
        dyn = dynamic_reward(video, fps)
        sem = prompt_reward(video, prompt, judge)
        rows.append({"r_id": ident.reward, "r_dyn": dyn.reward, "r_sem": sem.reward,
                     "face_hit_rate": ident.face_hit_rate, "is_dynamic": dyn.is_dynamic,
                     "id_backend": ident.backend, "r_sem_status": sem.reason, "r_sem_answer_mass": sem.answer_mass})
    return rows


# ---- the math: pure functions ------------------------------------------------------------------

def sample_frame_indices(total: int, num: int) -> np.ndarray:
    """`num` evenly spaced frame indices in [0, total), first and last included, no repeats."""
    return np.unique(np.linspace(0, total - 1, min(num, total)).round().astype(int))


def cosine_to_reference(emb: np.ndarray, found: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """cos(emb_f, ref) per row where found[f], else 0 (a frame without a face scores 0).
    emb [F, D], found [F] bool, ref [D] -> [F] float32."""
    norms = np.linalg.norm(emb, axis=1) * np.linalg.norm(ref)              # [F]
    cos = np.clip((emb @ ref) / np.where(norms > 0, norms, 1.0), -1.0, 1.0)  # float32 can reach 1 + 1e-7
    return np.where(found, cos, 0.0).astype(np.float32)


def top_fraction_mean(values: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Mean of the largest int(n·fraction) values (at least one), any shape. VBench's per-pair
    statistic (vbench/dynamic_degree.py, DynamicDegree.get_score: cut_index = int(h·w·0.05))."""
    flat = np.ravel(values)
    k = max(1, int(flat.size * fraction))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def is_dynamic_vbench(pair_scores, num_frames: int, fps: float) -> bool:
    """VBench's dynamic-degree decision (Vchitect/VBench, vbench/dynamic_degree.py: set_params,
    check_move), for pair statistics in px at a 256-px short side over frames taken at ~8 fps.
    VBench's threshold 6·(min(H, W)/256)·max(1, 8/fps) in native px is 6·max(1, 8/fps) here;
    the video is dynamic when at least round(4·num_frames/16) pairs exceed it."""
    threshold = 6.0 * max(1.0, 8.0 / fps)
    count_needed = round(4 * (num_frames / 16.0))
    return int(np.sum(np.asarray(pair_scores) > threshold)) >= count_needed


# ---- helpers, in the order the entry points above use them -------------------------------------

def _check_video(video) -> None:
    if not (isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4
            and video.shape[-1] == 3 and len(video) > 0):
        shape = getattr(video, "shape", None)
        raise ValueError(f"a video must be a numpy uint8 array [F, H, W, 3] (RGB), got "
                         f"{type(video).__name__} {getattr(video, 'dtype', '')} {shape}")


_DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def _frames_for_flow(video: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> grey uint8 [F, h, w] with min(h, w) = 256: the fixed scale that
    makes flow magnitudes comparable across resolutions."""
    h, w = video.shape[1:3]
    scale = FLOW_SHORT_SIDE / min(h, w)
    size = (round(w * scale), round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.cvtColor(cv2.resize(f, size, interpolation=interp), cv2.COLOR_RGB2GRAY)
                     for f in video])


def _pair_statistics(dis, gray: np.ndarray) -> np.ndarray:
    """Top-5 % mean flow magnitude for each consecutive pair of gray [n, h, w] -> [n-1]."""
    stats = []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = dis.calc(a, b, None)                                # [h, w, 2] px
        stats.append(top_fraction_mean(cv2.magnitude(flow[..., 0], flow[..., 1])))  # [h, w]
    return np.array(stats, np.float32)
