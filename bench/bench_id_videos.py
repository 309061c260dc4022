"""The offline ID reward on real generated videos: does r_id tell the person from other people?

The dev set is ../shared/data/faces/videos: 19 generated videos (61 frames, 640x360) of 4 identities,
with people who move, turn, appear small or in the dark. Each video is scored against the reference
photos of each of the 4 identities, exactly as train.py scores a video: rewards.identity_reward with
faces.make_face_encoder("dlib") and faces.load_references, 16 sampled frames. References of an
identity are its frames ../shared/data/faces/idXX_vK_fJ.png that do not come from the scored video
(its README and manifest.json name each frame's source video), minus those where dlib finds no face.

Printed, before (issue 19: HOG frame by frame, a frame without a face counts as cosine 0) and after
(face_tracks.py's search; r_id over frames with a face, rewards.identity_from_frames):
face-hit rate per video, r_id for the same person and for the 3 others, the AUC of same vs other
(the chance that a same-person score beats an other-person one), and CPU seconds per video. Then the
dlib calibration: same and cross are the mean r_id, δ_id = DELTA_FRACTION · (same − cross), the
fraction of the gap that METHOD's δ_id = 0.10 is on the ArcFace scale (0.10 / (0.60 − 0.05)).

The single-frame protocol (issue 29, item 5: the held-out check of 7 unseen people gave AUC 0.936): a
reference is ONE frame of a video A (every 6th, 640x360, read by load_references like a photo; frames
where it finds no face are refused and counted), scored against every other video B on B's every 6th
frame; the AUC pools all (reference, video) pairs. Beside it, each factor alone: the presence rule off,
the AUC within one reference (the ranking pair selection sees), how often same − cross exceeds δ_id,
the reference's face size, B sampled as train.py does (16 frames), A's frames averaged into one reference.

    python bench/bench_id_videos.py            # single-frame, then before and after (~10 min on a quiet CPU)
    python bench/bench_id_videos.py --after    # single-frame, the current reward and its calibration
    python bench/bench_id_videos.py --protocol single-frame [--no-mirror]

Measured 2026-12-05, single-frame (CPU, 2 loaded cores; 157 of 198 frames accepted by the loader, the
41 refused are turned or lowered heads, e.g. all 11 of the dark id03_v3):
    --no-mirror  same 0.918 ± 0.019  cross 0.811 ± 0.046  AUC 0.986 (presence rule off 0.986, within one
                 reference 0.986; same − cross > δ_id = 0.020 in 0.950 of pairs; reference face < 60 px
                 0.992, 60-100 px 0.982, ≥ 100 px 0.987; B at 16 frames 0.985; A's frames averaged 0.985)
    mirror       same 0.923 ± 0.019  cross 0.817 ± 0.045  AUC 0.988 (presence rule off 0.988, within one
                 reference 0.988; > δ_id in 0.954 of pairs; < 60 px 0.994, 60-100 px 0.982, ≥ 100 px 0.989;
                 B at 16 frames 0.988; A's frames averaged 0.987)
On the dev people the single-frame protocol is no harsher than the photo protocol (0.986 vs 0.987), and no
factor alone moves it by more than 0.005: what separates the held-out 0.936 is the people (dlib's descriptor
tells these 4 apart better than those 7), not the protocol.

Measured 2026-11-24 (CPU, 1 thread for numpy, 18 videos):
    before  face-hit 0.729 (0.00..1.00)  same 0.684 ± 0.319  cross 0.595 ± 0.282  AUC 0.671  CPU 2.04 s/video (max 2.44)
    after   face-hit 0.997 (0.94..1.00)  same 0.930 ± 0.021  cross 0.821 ± 0.049  AUC 0.987  CPU 2.65 s/video (max 3.29)
Measured 2026-12-05 (--after, 2 loaded cores), the descriptor averaged with the mirrored face's:
    after   face-hit 0.997 (0.94..1.00)  same 0.935 ± 0.020  cross 0.825 ± 0.047  AUC 0.993  CPU 3.94 s/video (loaded)
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import faces as F  # noqa: E402
import media  # noqa: E402
import rewards as R  # noqa: E402

# Test data this project may use but not redistribute, outside the repository (tests/conftest.py reads the same).
FACES = Path(os.environ.get("MAGICID_FACES_DATA") or ROOT.parent / "shared" / "data" / "faces")
DELTA_FRACTION = 0.10 / (0.60 - 0.05)  # δ_id as a fraction of the same-vs-cross gap (ArcFace's numbers)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--after", action="store_true", help="only the current method (skip the before run)")
    p.add_argument("--frames", type=int, default=16, help="sampled frames per video, as train.py")
    p.add_argument("--protocol", choices=("photos", "single-frame", "both"), default="both",
                   help="photos: each video against each identity's photos (the figures above); single-frame: "
                        "one frame of video A as the reference, video B every 6th frame (the held-out check)")
    p.add_argument("--no-mirror", action="store_true", help="dlib descriptor of the face alone, not averaged with "
                                                             "its mirror image's (the reward before issue 29)")
    args = p.parse_args()
    if not (FACES / "videos" / "manifest.json").is_file():
        sys.exit(f"bench_id_videos.py: needs the test faces' videos in {FACES / 'videos'} (not in the repository); "
                 "set MAGICID_FACES_DATA to the folder that holds them")

    videos = dev_videos()
    if args.protocol != "photos":
        print_single_frame(single_frame_pairs(F.DlibFaceEncoder(mirror_average=not args.no_mirror), videos))
    if args.protocol == "single-frame":
        return
    methods = {"after": DevScorer(F.DlibFaceEncoder(mirror_average=not args.no_mirror), False, args.frames)}
    if not args.after:
        methods = {"before": DevScorer(F.DlibFaceEncoder(video_search=False, mirror_average=False), True,
                                       args.frames), **methods}
    results = {name: [] for name in methods}
    for video in videos:  # the methods take turns on each video: both see the same load on a shared machine
        for name, scorer in methods.items():
            results[name].append(scorer.score(video))
    for name, rows in results.items():
        print(f"\n== {name}: {methods[name].encoder.describe()}")
        print(f"{'video':10s} {'hit':>5s} {'same':>6s} {'others':>20s} {'s/video':>8s}")
        for row in rows:
            others = " ".join(f"{v:.3f}" for k, v in row["r_id"].items() if k != row["identity"])
            print(f"{row['video']:10s} {row['face_hit_rate']:5.2f} {row['r_id'][row['identity']]:6.3f} "
                  f"{others:>20s} {row['seconds']:8.2f}")
        same, cross = same_and_cross(rows)
        print(f"face-hit rate {np.mean([r['face_hit_rate'] for r in rows]):.3f} (per video "
              f"{min(r['face_hit_rate'] for r in rows):.2f}..{max(r['face_hit_rate'] for r in rows):.2f}); "
              f"CPU seconds per video {np.mean([r['seconds'] for r in rows]):.2f}")
        print(f"r_id same  {describe(same)}\nr_id cross {describe(cross)}\nAUC same vs cross {auc(same, cross):.3f}")
    same, cross = same_and_cross(results["after"])
    print(f"\ncalibration (dlib, after): same {same.mean():.3f}, cross {cross.mean():.3f}, "
          f"delta_id = {DELTA_FRACTION:.3f} x {same.mean() - cross.mean():.3f} = "
          f"{DELTA_FRACTION * (same.mean() - cross.mean()):.3f}; faces.ID_CALIBRATION['dlib'] = "
          f"{F.ID_CALIBRATION['dlib']}")


def dev_videos() -> list[dict]:
    """The dev videos: [{video: name, identity, source, frames: uint8 [61, 360, 640, 3]}]. A file
    identical to an earlier one is left out: id01_v3.mp4 (rain/4.mp4 on the project page) is
    id01_v1.mp4 (demo/4.mp4) byte for byte, so id01_v1_f*.png are frames of both: 18 videos."""
    manifest = json.loads((FACES / "videos" / "manifest.json").read_text())
    videos, seen = [], set()
    for m in manifest:
        digest = hashlib.sha1((FACES / m["file"]).read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            videos.append({"video": Path(m["file"]).stem, "identity": m["identity"], "source": m["source_video"],
                           "frames": media.read_video(str(FACES / m["file"]))})
    return videos


def reference_photos(encoder: F.FaceEncoder) -> dict[str, list[tuple[str, Path]]]:
    """identity -> [(source video, photo)] for the photos in which the encoder finds a face."""
    photos = {}
    for entry in json.loads((FACES / "manifest.json").read_text()):
        path = FACES / entry["file"]
        if path.suffix != ".png":
            continue
        try:
            F.load_references([path], encoder)
        except F.ReferencePhotoError:  # id04_v2_f0.png: head lowered, dlib finds no face
            continue
        photos.setdefault(entry["identity"], []).append((entry["source_video"], path))
    return photos


def score_dev_videos(encoder: F.FaceEncoder, videos: list[dict]) -> list[dict]:
    """The current r_id of every dev video against every identity (DevScorer.score's rows)."""
    scorer = DevScorer(encoder)
    return [scorer.score(video) for video in videos]


class DevScorer:
    """Scores a video against every identity's references through rewards.identity_reward.
    old_rule: r_id = mean of per_frame with 0 for frames without a face (before issue 19)."""

    def __init__(self, encoder: F.FaceEncoder, old_rule: bool = False, num_frames: int = 16):
        self.encoder, self.old_rule, self.num_frames = encoder, old_rule, num_frames
        self.photos = reference_photos(encoder)
        self.once = FacesFoundOnce(encoder)
        self.references = {}  # tuple of photo paths -> faces.References, loaded once

    def score(self, video: dict) -> dict:
        """-> {video, identity, face_hit_rate, seconds (CPU s: one video's face search and scoring),
        r_id: {identity: r_id}}"""
        row = {"video": video["video"], "identity": video["identity"], "r_id": {}}
        for identity, sources in sorted(self.photos.items()):
            paths = tuple(path for source, path in sources if source != video["source"])
            if paths not in self.references:
                self.references[paths] = F.load_references(list(paths), self.encoder)
            start = time.process_time()  # CPU time: other jobs on a shared machine do not inflate it
            score = R.identity_reward(video["frames"], self.references[paths], self.once, self.num_frames)
            row.setdefault("seconds", time.process_time() - start)  # the first call searches the faces
            row["r_id"][identity] = float(score.per_frame.mean()) if self.old_rule else score.reward
            row["face_hit_rate"] = score.face_hit_rate
        return row


class FacesFoundOnce(F.FaceEncoder):
    """An encoder that searches each video's faces once: scoring one video against 4 identities runs
    rewards.identity_reward 4 times (FaceEncoder.embed_faces picks each frame's face closest to that
    identity, as in training), while the faces, the costly part, are found at the first call."""

    def __init__(self, encoder: F.FaceEncoder):
        self.encoder, self.name, self.dim, self.found = encoder, encoder.name, encoder.dim, {}

    def describe(self) -> str:
        return self.encoder.describe()

    def find_video_faces(self, frames: np.ndarray) -> list[list[F.Face]]:
        key = hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest()
        if key not in self.found:
            self.found[key] = self.encoder.find_video_faces(frames)
        return self.found[key]


def same_and_cross(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """r_id against the video's own identity [n_videos], and against the others [n_videos · 3]."""
    same = [r["r_id"][r["identity"]] for r in rows]
    cross = [v for r in rows for k, v in r["r_id"].items() if k != r["identity"]]
    return np.array(same), np.array(cross)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney AUC)."""
    diff = np.asarray(positive)[:, None] - np.asarray(negative)[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def describe(values: np.ndarray) -> str:
    return (f"mean {values.mean():.3f} ± {values.std():.3f}, min {values.min():.3f}, "
            f"median {np.median(values):.3f}, max {values.max():.3f} (n={len(values)})")


# ---- the single-frame protocol: one frame of video A against video B ---------------------------

SINGLE_FRAME_STEP = 6  # reference frames and scored frames: every 6th frame (0, 6, ..., 60) of 640x360 video


def single_frame_pairs(encoder: F.FaceEncoder, videos: list[dict], step: int = SINGLE_FRAME_STEP) -> dict:
    """The held-out check of issue 29 rebuilt on the dev videos. A reference is ONE frame of a video A,
    written as a PNG and read by faces.load_references as a user's photo would be (frames where it finds
    no face are refused, and counted); it is scored with rewards.identity_reward against every other video
    B, on B's every `step`-th frame. -> {refs: [{video, identity, frame, face_px, refs}], refused: [(video,
    frame)], pairs: [{ref: index into refs, video, same, score: IdentityScore}]}."""
    once, refs, refused = FacesFoundOnce(encoder), [], []
    with tempfile.TemporaryDirectory() as tmp:
        for video in videos:
            for i in range(0, len(video["frames"]), step):
                path = Path(tmp) / f"{video['video']}_{i}.png"
                media.write_png(str(path), video["frames"][i])
                try:
                    loaded = F.load_references([path], encoder)
                except F.ReferencePhotoError:
                    refused.append((video["video"], i))
                    continue
                face = encoder.find_faces(video["frames"][i], thorough=True)
                height = max(f.box[3] - f.box[1] for f in face) if face else 0.0
                refs.append({"video": video["video"], "identity": video["identity"], "frame": i,
                             "face_px": float(height), "refs": loaded})
    pairs = []
    for video in videos:
        frames = video["frames"][::step]  # [11, 360, 640, 3]
        for k, ref in enumerate(refs):
            if ref["video"] != video["video"]:
                score = R.identity_reward(frames, ref["refs"], once, num_frames=len(frames))
                pairs.append({"ref": k, "video": video["video"], "same": ref["identity"] == video["identity"],
                              "score": score})
    return {"refs": refs, "refused": refused, "pairs": pairs, "encoder": encoder, "once": once, "videos": videos}


def single_frame_auc(pairs: list[dict], reward=lambda score: score.reward) -> float:
    """AUC of same- vs different-person pairs, all references pooled (the held-out figure)."""
    same = np.array([reward(p["score"]) for p in pairs if p["same"]])
    cross = np.array([reward(p["score"]) for p in pairs if not p["same"]])
    return auc(same, cross)


def within_reference_auc(pairs: list[dict], reward=lambda score: score.reward) -> float:
    """The mean over references of the AUC among the videos scored against that one reference: the ranking
    pair selection sees (it compares videos of one reference), free of offsets between references."""
    per_ref = {}
    for p in pairs:
        per_ref.setdefault(p["ref"], []).append(p)
    return float(np.mean([single_frame_auc(rows, reward) for rows in per_ref.values()]))


def margin_rate(pairs: list[dict], delta: float) -> float:
    """Under one reference, the fraction of (same-person video, other-person video) pairs whose r_id differ by
    more than delta in the right direction: how often a δ_id margin would order them correctly."""
    hits, total = 0, 0
    for k in {p["ref"] for p in pairs}:
        rows = [p for p in pairs if p["ref"] == k]
        same = np.array([p["score"].reward for p in rows if p["same"]])
        cross = np.array([p["score"].reward for p in rows if not p["same"]])
        hits += int(np.sum(same[:, None] - cross[None, :] > delta))
        total += same.size * cross.size
    return hits / total


def print_single_frame(data: dict) -> None:
    pairs, refs = data["pairs"], data["refs"]
    same = np.array([p["score"].reward for p in pairs if p["same"]])
    cross = np.array([p["score"].reward for p in pairs if not p["same"]])
    n_frames = len(refs) + len(data["refused"])
    delta = F.ID_CALIBRATION[data["encoder"].name].delta_id
    print(f"\n== single-frame protocol: {data['encoder'].describe()}")
    print(f"reference frames: {len(refs)} of {n_frames} accepted by load_references "
          f"(refused: {', '.join(f'{v}@{i}' for v, i in data['refused']) or 'none'})")
    print(f"r_id same  {describe(same)}\nr_id cross {describe(cross)}")
    print(f"AUC same vs cross, pooled over references {single_frame_auc(pairs):.3f}")
    print("each factor alone:")
    no_presence = lambda s: R.identity_from_frames(s.per_frame, s.found, min_presence=1e-9)  # noqa: E731
    print(f"  presence rule off (plain mean over frames with a face)   AUC {single_frame_auc(pairs, no_presence):.3f}")
    print(f"  within one reference (what pair selection compares)      AUC {within_reference_auc(pairs):.3f}")
    print(f"  same - cross > delta_id = {delta:.3f} under one reference   {margin_rate(pairs, delta):.3f} of pairs "
          f"(> 0: {margin_rate(pairs, 0.0):.3f})")
    for low, high in ((0, 60), (60, 100), (100, 1e9)):
        rows = [p for p in pairs if low <= refs[p["ref"]]["face_px"] < high]
        if rows:
            n = len({p["ref"] for p in rows})
            print(f"  reference face {low:>3.0f}-{min(high, 999):<3.0f} px high ({n:3d} frames)             "
                  f"AUC {single_frame_auc(rows):.3f}")
    print(f"  16 evenly spaced frames of B instead of every 6th        AUC {sixteen_frame_auc(data):.3f}")
    print(f"  reference = all accepted frames of A, averaged           AUC {whole_video_reference_auc(data):.3f}")


def sixteen_frame_auc(data: dict) -> float:
    """The single-frame AUC with video B sampled as train.py does (16 evenly spaced frames)."""
    pairs = []
    for video in data["videos"]:
        for k, ref in enumerate(data["refs"]):
            if ref["video"] != video["video"]:
                score = R.identity_reward(video["frames"], ref["refs"], data["once"], num_frames=16)
                pairs.append({"ref": k, "same": ref["identity"] == video["identity"], "score": score})
    return single_frame_auc(pairs)


def whole_video_reference_auc(data: dict) -> float:
    """The AUC when video A's accepted frames are averaged into one reference (several photos, as the bench's
    photo protocol has), everything else as the single-frame protocol."""
    by_video = {}
    for ref in data["refs"]:
        by_video.setdefault(ref["video"], []).append(ref)
    merged = {}
    for name, rows in by_video.items():
        embeddings = np.concatenate([r["refs"].embeddings for r in rows])  # [n, D]
        merged[name] = F.References(np.concatenate([r["refs"].crops for r in rows]), embeddings,
                                    F.mean_unit_embedding(embeddings), rows[0]["refs"].backend, [])
    identity = {v["video"]: v["identity"] for v in data["videos"]}
    pairs = []
    for video in data["videos"]:
        frames = video["frames"][::SINGLE_FRAME_STEP]
        for name, refs in merged.items():
            if name != video["video"]:
                score = R.identity_reward(frames, refs, data["once"], num_frames=len(frames))
                pairs.append({"ref": name, "same": identity[name] == video["identity"], "score": score})
    return single_frame_auc(pairs)


if __name__ == "__main__":
    main()
