"""repository.py — MagicID's preference repository on disk: every scored video, kept so nothing is made twice.

The repository (METHOD.md step 2) holds K videos per prompt from the initial and the fine-tuned model, and the
static videos, each with its latents and rewards; pair selection (sampling.py) reads its table and DPO reads
the latents of the chosen pairs. It lives in the run folder (run.py) and shares its crash safety: every
file is written whole or not at all (run.atomic_write), so a run killed mid-write resumes with the videos
it had.

It is filled in two stages of train.py: add_static_videos (stage 1: the photos as still videos, which the
identity stage trains on and identity pairs prefer) and build_repository (stage 2: K videos per prompt from
the initial and the current model, scored on a worker while the GPU samples the next batch).

Exports: Repository, add_static_videos, build_repository.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from tqdm import tqdm

import parallel
from faces import read_photo
from run import atomic_write
from sampling import SOURCES, crop_around_face, static_video
from scoring_worker import ScoringWorker


class Repository:
    """Scored videos on disk, one file each, that survive a crash mid-write.

    <root>/videos/<id>.safetensors   tensors: "latents" [C, f, h, w] (fp32 or bf16) and optionally
                                     "preview" uint8 [k, H, W, 3] (k evenly spaced frames);
                                     metadata "magicid": JSON {prompt, source, seed, rewards}
    <root>/index.json                a cache of every entry's metadata, checked against the files
                                     when opened and rebuilt from them when missing, unreadable or
                                     stale.
    Each file is written under a temporary name, fsynced and moved into place with os.replace
    (atomic on POSIX): a crash leaves the old file or the new one, never half of one. A video is
    identified by (prompt, source, seed), so a repeated run asks has() and skips it. Only
    safetensors and JSON are read: nothing is unpickled. One writer at a time.
    """

    def __init__(self, root):
        self.root = Path(root)
        self.video_dir = self.root / "videos"
        self.video_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.video_dir.glob(".*.tmp*"):  # a write interrupted by a crash
            leftover.unlink()
        self._index = self._scan()                       # {id: {"mtime_ns", "prompt", ...}}
        self._write_index()

    def add(self, latents, prompt, source, rewards, seed, video=None, preview_frames=4):
        """Store one scored video; returns its id. Adding the same (prompt, source, seed) replaces it.

        latents: [C, f, h, w]; rewards: JSON-able dict with at least r_id and r_dyn (also r_sem or
        None, face_hit_rate, backend); video: optional uint8 [F, H, W, 3] to keep a preview of.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if latents.ndim != 4:
            raise ValueError(f"latents must be one video [C, f, h, w], got shape {tuple(latents.shape)}")
        missing = {"r_id", "r_dyn"} - set(rewards)
        if missing:
            raise ValueError(f"rewards lack {sorted(missing)}: score the video before adding it")
        video_id = self.video_id(prompt, source, seed)
        tensors = {"latents": latents.detach().cpu().contiguous()}
        if video is not None:
            keep = np.linspace(0, len(video) - 1, min(preview_frames, len(video))).round().astype(int)
            tensors["preview"] = torch.from_numpy(np.ascontiguousarray(np.asarray(video)[keep]))
        meta = {"prompt": prompt, "source": source, "seed": int(seed), "rewards": rewards}
        meta = json.loads(json.dumps(meta, default=float))   # numpy scalars -> plain floats
        path = self._path(video_id)
        atomic_write(path, safetensors_bytes(tensors, metadata={"magicid": json.dumps(meta)}))
        self._index[video_id] = {"mtime_ns": path.stat().st_mtime_ns, **meta}
        self._write_index()
        return video_id

    def has(self, prompt, source, seed):
        return self.video_id(prompt, source, seed) in self._index

    def entries(self):
        """Every video's metadata, sorted by id: [{"id", "prompt", "source", "seed", "rewards"}]."""
        return [{"id": k, **{f: v[f] for f in ("prompt", "source", "seed", "rewards")}}
                for k, v in sorted(self._index.items())]

    def latents(self, video_id):
        """latents: [C, f, h, w] as stored."""
        with safe_open(self._path(video_id), framework="pt") as f:
            return f.get_tensor("latents")

    def preview(self, video_id):
        """preview: uint8 numpy [k, H, W, 3], or None when the video was added without one."""
        with safe_open(self._path(video_id), framework="pt") as f:
            return f.get_tensor("preview").numpy() if "preview" in f.keys() else None

    def table(self):
        """The columns pair selection reads, aligned with entries(): ids, prompt, source, r_id, r_dyn, r_sem."""
        es = self.entries()
        rewards = [e["rewards"] for e in es]
        return {
            "id": [e["id"] for e in es],
            "prompt": np.array([e["prompt"] for e in es], dtype=object),
            "source": np.array([e["source"] for e in es], dtype=object),
            "r_id": np.array([r["r_id"] for r in rewards], dtype=float),
            "r_dyn": np.array([r["r_dyn"] for r in rewards], dtype=float),
            "r_sem": np.array([np.nan if r.get("r_sem") is None else r["r_sem"] for r in rewards], dtype=float),
        }

    @staticmethod
    def video_id(prompt, source, seed):
        """A readable, stable id: <source>-<seed>-<12 hex of sha1(prompt)>."""
        return f"{source}-{int(seed)}-{hashlib.sha1(prompt.encode()).hexdigest()[:12]}"

    def _path(self, video_id):
        return self.video_dir / f"{video_id}.safetensors"

    def _scan(self):
        """index.json brought in line with the files: new or changed files re-read, gone ones dropped."""
        try:
            cached = json.loads((self.root / "index.json").read_text())
        except (OSError, ValueError):
            cached = None                                 # missing or corrupt: rebuild from the files
        cached = cached if isinstance(cached, dict) else {}
        index = {}
        for path in sorted(self.video_dir.glob("[!.]*.safetensors")):  # not a hidden temporary file
            video_id, mtime = path.name.removesuffix(".safetensors"), path.stat().st_mtime_ns
            hit = cached.get(video_id)
            if isinstance(hit, dict) and hit.get("mtime_ns") == mtime:
                index[video_id] = hit
                continue
            try:                                          # new, or replaced after the index was written
                with safe_open(path, framework="pt") as f:
                    index[video_id] = {"mtime_ns": mtime, **json.loads(f.metadata()["magicid"])}
            except Exception as err:                      # damaged outside our atomic writes
                warnings.warn(f"repository: skipping unreadable {path} ({err}); it will be regenerated")
        return index

    def _write_index(self):
        atomic_write(self.root / "index.json", json.dumps(self._index, indent=1, sort_keys=True).encode())


# ---------------------------------------------------------------------- filling it: train.py's stages 1 and 2

def add_static_videos(repo, model, refs, encoder, args, captions, scored_add):
    """--static-videos static videos, cycling over the photos and captions, each with its own jitter.
    scored_add(videos, latents, prompts, source, seeds) scores them and adds them to `repo`."""
    d = model.defaults
    frames, height, width = args.frames or d.frames, args.height or d.height, args.width or d.width
    photos = [read_photo(Path(p)) for p in refs.paths]
    if args.face_framing > 0:  # zoom each photo to its face (the largest, as load_references chose)
        boxes = [max(encoder.find_faces(photo, thorough=True), key=lambda f: f.area).box for photo in photos]
        photos = [crop_around_face(photo, box, height / width, args.face_framing) for photo, box in zip(photos, boxes)]
    for i in tqdm(parallel.shard(list(range(args.static_videos))), desc="static videos", unit="video",
                  disable=not parallel.is_main()):
        caption = captions[i % len(captions)]
        if repo.has(caption, "static", i):
            continue
        rng = np.random.default_rng([args.seed, i])
        clip = static_video(photos[i % len(photos)], frames, height, width, jitter=args.jitter, rng=rng)
        scored_add(clip[None], model.encode_video(clip[None]), [caption], "static", [i])
    parallel.barrier()


def build_repository(repo, model, prompts, round_index, args, video, scored_add, timer):
    """K videos per prompt from the initial model (no LoRA) and from the current one; skip what exists.

    Jobs are (source, prompt) batches of K seeds, spread over processes (parallel.shard); each video
    is its own file, so a process that dies loses at most the batch it was writing. One scoring worker
    (scoring_worker.py): the repository keeps one writer, and "repository scoring" in the timings is the
    time the GPU waited for it, not its whole cost.
    """
    sources = [("initial", None), ("finetuned", "default")] if round_index == 0 else [("finetuned", "default")]
    all_seeds = [args.seed + 1000 * round_index + k for k in range(args.videos_per_prompt)]
    jobs = [(source, adapter, prompt) for source, adapter in sources for prompt in prompts]
    with ScoringWorker(waiting=lambda videos: timer("repository scoring", videos)) as worker:
        for source, adapter, prompt in tqdm(parallel.shard(jobs), desc=f"repository round {round_index}",
                                            unit="prompt", disable=not parallel.is_main()):
            seeds = [s for s in all_seeds if not repo.has(prompt, source, s)]
            if not seeds:
                continue
            with model.adapter(adapter), timer("repository videos", len(seeds)):  # sampling and the VAE decode
                videos, latents = model.sample([prompt] * len(seeds), seed=seeds, cfg_interval=args.cfg_interval,
                                               cache=args.cache, **video)
            worker.submit(scored_add, videos, latents, [prompt] * len(seeds), source, seeds, units=len(seeds))
    parallel.barrier()
    return Repository(repo.root)  # re-read: the other processes' videos are on disk now
