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

    python bench/bench_id_videos.py            # before and after, ~2 min on a quiet CPU
    python bench/bench_id_videos.py --after    # the current reward and its calibration only

Measured 2026-11-24 (CPU, 1 thread for numpy, 18 videos):
    before  face-hit 0.729 (0.00..1.00)  same 0.684 ± 0.319  cross 0.595 ± 0.282  AUC 0.671  CPU 2.04 s/video (max 2.44)
    after   face-hit 0.997 (0.94..1.00)  same 0.930 ± 0.021  cross 0.821 ± 0.049  AUC 0.987  CPU 2.65 s/video (max 3.29)
"""

import argparse
import hashlib
import json
import os
import sys
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
    args = p.parse_args()
    if not (FACES / "videos" / "manifest.json").is_file():
        sys.exit(f"bench_id_videos.py: needs the test faces' videos in {FACES / 'videos'} (not in the repository); "
                 "set MAGICID_FACES_DATA to the folder that holds them")

    videos = dev_videos()
    methods = {"after": DevScorer(F.make_face_encoder("dlib"), False, args.frames)}
    if not args.after:
        methods = {"before": DevScorer(F.DlibFaceEncoder(video_search=False), True, args.frames), **methods}
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


if __name__ == "__main__":
    main()
