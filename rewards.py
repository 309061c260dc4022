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
every score); the reference photos and ē come from faces.load_references. The prompt judge comes
from a local folder, load_judge("clip:DIR" | "vlm:DIR"), and names itself in every score.

Exports: identity_reward (identity_from_frames), dynamic_reward, prompt_reward, load_judge (load_clip, load_vlm), score_videos; the pure math:
sample_frame_indices, cosine_to_reference, top_fraction_mean, is_dynamic_vbench.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

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


@dataclass
class PromptScore:
    reward: float | None   # r_sem, None when off
    enabled: bool
    reason: str            # the judge that ran (its name), or why the reward is off
    per_frame: np.ndarray | None = None  # [S] CLIP: each sampled frame's cosine; VLM: None (one answer)
    answer_mass: float | None = None     # VLM: P(yes) + P(no) over the vocabulary; far below 1: not a yes/no answer


class PromptJudge(Protocol):
    """What prompt_reward needs of a judge: ClipScorer and VlmJudge both are one."""
    name: str         # which judge ran, written into every score
    num_frames: int   # frames it looks at by default

    def score(self, video: np.ndarray, prompt: str, num_frames: int) -> PromptScore: ...


def load_judge(spec: str, device: str = "cpu") -> PromptJudge:
    """'clip:DIR' or 'vlm:DIR', a local checkpoint folder -> its judge, loaded once; pass it to
    prompt_reward / score_videos."""
    kind, _, folder = spec.partition(":")
    if kind not in ("clip", "vlm") or not folder:
        raise ValueError(f"prompt judge {spec!r}: write clip:DIR (a local CLIP checkpoint folder) or vlm:DIR "
                         f"(a local image-text-to-text VLM folder, e.g. SmolVLM-256M-Instruct or Qwen2.5-VL)")
    return load_clip(folder, device) if kind == "clip" else load_vlm(folder, device)


@dataclass
class ClipScorer:
    """The CLIP judge: r_sem = 1/|S| · Σ_{f∈S} cos(CLIP_image(f), CLIP_text(c)), a cosine."""
    model: object       # transformers CLIPModel, eval mode
    processor: object   # its CLIPProcessor
    device: str
    folder: str         # the checkpoint folder's name
    num_frames: ClassVar[int] = 8

    @property
    def name(self) -> str:
        return f"CLIP {self.folder}"

    def score(self, video: np.ndarray, prompt: str, num_frames: int) -> PromptScore:
        import torch

        frames = sample_frame_indices(len(video), num_frames)
        inputs = self.processor(text=[prompt], images=list(video[frames]), return_tensors="pt",
                                padding=True, truncation=True).to(self.device)
        with torch.no_grad():
            out = self.model(**inputs)
        image_emb = out.image_embeds.float().cpu().numpy()   # [S, D]
        text_emb = out.text_embeds[0].float().cpu().numpy()  # [D]
        per_frame = cosine_to_reference(image_emb, np.ones(len(frames), bool), text_emb)  # [S]
        return PromptScore(float(per_frame.mean()), True, self.name, per_frame)


def load_clip(path: str | Path, device: str = "cpu") -> ClipScorer:
    """A local CLIP checkpoint folder (saved by transformers: config, weights, tokenizer,
    preprocessor). Loaded once; pass the result to prompt_reward / score_videos."""
    from transformers import CLIPModel, CLIPProcessor

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no CLIP checkpoint at {path}: give a folder with config.json, weights, tokenizer "
                                f"and preprocessor files (e.g. openai/clip-vit-base-patch32 downloaded beforehand), "
                                f"or leave the judge out to switch r_sem off")
    if _model_type(path) != "clip":
        raise ValueError(f"{path} holds a {_model_type(path)!r} checkpoint, not CLIP (model_type 'clip' in "
                         f"config.json); for an image-text-to-text VLM pass vlm:{path}")
    model = CLIPModel.from_pretrained(path).eval().to(device)
    return ClipScorer(model, CLIPProcessor.from_pretrained(path), device, path.name)


VLM_QUESTION = "These are {n} frames of one video, in order. Does this video show: {prompt}? Answer yes or no."
YES, NO = ("yes", "Yes", " yes", " Yes"), ("no", "No", " no", " No")   # the spellings a chat model answers with


@dataclass
class VlmJudge:
    """The VLM judge, VQAScore-style (Lin et al. 2024, "Evaluating text-to-visual generation with
    image-to-text generation") on video frames. The S sampled frames go in as S images of one user
    message, then VLM_QUESTION, through the model's own chat template; from the next-token distribution
    (softmax over the whole vocabulary), with P(yes) summed over the spellings in YES:

        r_sem = P(yes) / (P(yes) + P(no))

    Why renormalize over yes/no: a chat model spreads its answer over spellings ("Yes", " yes", ...)
    and formatting tokens; the ratio is its yes-vs-no odds in [0, 1] (0.5: undecided) whatever that
    leak, and answer_mass = P(yes) + P(no) is kept in every score to show when it is large.
    Why S separate images, not one grid: each frame keeps the resolution the vision encoder was trained
    at (a 2×2 grid quarters a face's area) and SmolVLM / Qwen2.5-VL are trained on multi-image input;
    the cost is S times the image tokens. A spelling of several tokens t_1..t_k counts with
    Π_i P(t_i | frames, question, t_<i): one more forward pass each.
    """
    model: object      # AutoModelForImageTextToText, eval mode
    processor: object  # its AutoProcessor: image processor, tokenizer, chat template
    device: str
    folder: str        # the checkpoint folder's name
    yes: list          # [tuple of token ids] per spelling of yes, deduplicated
    no: list           # the same for no
    num_frames: ClassVar[int] = 4

    @property
    def name(self) -> str:
        return f"VLM {self.folder} ({type(self.model).__name__})"

    def score(self, video: np.ndarray, prompt: str, num_frames: int) -> PromptScore:
        import torch
        from PIL import Image

        frames = sample_frame_indices(len(video), num_frames)                         # [S]
        question = VLM_QUESTION.format(n=len(frames), prompt=prompt.strip().rstrip("."))
        images = [{"type": "image", "image": Image.fromarray(frame)} for frame in video[frames]]
        messages = [{"role": "user", "content": [*images, {"type": "text", "text": question}]}]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        inputs = {k: v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in inputs.items()}                                         # pixels in the model's dtype
        with torch.no_grad():
            next_token = self._log_probs(inputs)[-1]                                  # [V] log P(· | frames, question)
            log_yes, log_no = (torch.logsumexp(torch.stack([self._answer_log_prob(inputs, next_token, answer)
                                                            for answer in answers]), 0)
                               for answers in (self.yes, self.no))
        reward = float(torch.sigmoid(log_yes - log_no))                               # P(yes) / (P(yes) + P(no))
        return PromptScore(reward, True, self.name, answer_mass=float(log_yes.exp() + log_no.exp()))

    def _log_probs(self, inputs: dict):
        """log-softmax over the vocabulary at every position of the one sequence: [L, V] float32."""
        import torch

        return torch.log_softmax(self.model(**inputs).logits[0].float(), dim=-1)

    def _answer_log_prob(self, inputs: dict, next_token, answer: tuple):
        """log P(answer | frames, question): one token read off next_token; several by appending all but
        the last to the input, where positions L-1 .. L+k-2 predict t_1 .. t_k."""
        import torch

        if len(answer) == 1:
            return next_token[answer[0]]
        ids = torch.tensor(answer, device=self.device)                                # [k]
        length = inputs["input_ids"].shape[1]
        log_probs = self._log_probs(_append_tokens(inputs, ids[:-1]))[length - 1:]    # [k, V]
        return log_probs.gather(1, ids[:, None]).sum()


def load_vlm(path: str | Path, device: str = "cpu") -> VlmJudge:
    """A local image-text-to-text checkpoint folder, loaded through transformers' own classes
    (AutoModelForImageTextToText, AutoProcessor; safetensors only, never remote code); bf16 on CUDA."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    path = Path(path).expanduser()
    expected = ("give a folder saved by transformers with config.json, *.safetensors weights and the processor "
                "files (tokenizer, image processor, chat template), e.g. HuggingFaceTB/SmolVLM-256M-Instruct "
                "downloaded beforehand")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no VLM checkpoint at {path}: {expected}")
    if _model_type(path) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        hint = f"; for a CLIP folder pass clip:{path}" if _model_type(path) == "clip" else ""
        raise ValueError(f"{path} holds a {_model_type(path)!r} checkpoint, not an image-text-to-text VLM that "
                         f"transformers knows (e.g. idefics3, smolvlm, qwen2_5_vl){hint}")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} holds no *.safetensors weights (pickled .bin files are not loaded): "
                                f"{expected}")
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, ImportError) as err:   # Qwen-VL's processors need torchvision, for one
        raise ValueError(f"cannot load the processor in {path} ({err}): {expected}") from None
    if getattr(processor, "tokenizer", None) is None or not getattr(processor, "chat_template", None):
        raise ValueError(f"{path} has no tokenizer or no chat template: the judge asks its question in the model's "
                         f"own chat format; use an instruction-tuned checkpoint ({expected})")
    yes, no = _spellings(processor.tokenizer, YES), _spellings(processor.tokenizer, NO)
    if any(a[:len(b)] == b or b[:len(a)] == a for a in yes for b in no):
        raise ValueError(f"the tokenizer in {path} starts a spelling of 'yes' and one of 'no' with the same tokens: "
                         f"P(yes) cannot be read from the next-token logits")
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True, dtype=dtype)
    return VlmJudge(model.eval().to(device), processor, device, path.name, yes, no)


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

def _model_type(path: Path) -> str | None:
    """config.json's model_type of a checkpoint folder: 'clip', 'idefics3', 'qwen2_5_vl', ..."""
    return json.loads((path / "config.json").read_text()).get("model_type")


def _spellings(tokenizer, words) -> list[tuple]:
    """Token ids of each word, deduplicated; a spelling whose tokens begin with another spelling's is
    dropped, its probability being part of the shorter one's already."""
    ids = list(dict.fromkeys(tuple(tokenizer.encode(word, add_special_tokens=False)) for word in words))
    return [a for a in ids if a and not any(len(b) < len(a) and a[:len(b)] == b for b in ids)]


def _append_tokens(inputs: dict, ids) -> dict:
    """The chat inputs with text tokens ids [k] appended: each per-token input [1, L] becomes [1, L+k]
    (attention 1, token type 0 = text); images and the rest unchanged."""
    import torch

    grown = dict(inputs)
    for key, fill in (("input_ids", None), ("attention_mask", 1), ("mm_token_type_ids", 0), ("token_type_ids", 0)):
        if key in inputs:
            extra = ids if fill is None else torch.full_like(ids, fill)
            grown[key] = torch.cat([inputs[key], extra[None].to(inputs[key].dtype)], dim=1)
    return grown


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
