"""toyworld/motion.py — does a video move as its caption says? Optical flow against the caption's motion.

A camera motion moves the whole frame, so its direction is the median flow over all pixels (dx, dy;
zoom = mean radial flow over radius). A person's motion moves only the person, so its direction is the
mean flow over the pixels that move (more than MOVING_PX per frame), and its size the 95th percentile
of the flow magnitude:

  camera pans left / right     median dx > 0 / < 0       (the scene slides against the camera)
  camera tilts up / down       median dy > 0 / < 0
  camera zooms in / out        zoom > 0 / < 0
  a person walks to the left   mean dx of moving pixels < 0   ("left" is the viewer's left)
  sways, shakes, other person motions: something moves;   still: nothing does.

Exports: measure_motion, follows_caption, caption_follow_rate, DIRECTED.
"""

from __future__ import annotations

import numpy as np

MOVING_PX = 0.5  # px per frame at the video's own size: slower pixels count as still
# motion -> (measurement, sign it must have): the motions whose direction the caption names
DIRECTED = {"camera pans left": ("dx", 1), "camera pans right": ("dx", -1), "camera tilts up": ("dy", 1),
            "camera tilts down": ("dy", -1), "camera zooms in": ("zoom", 1), "camera zooms out": ("zoom", -1),
            "walks to the left": ("moving_dx", -1), "walks to the right": ("moving_dx", 1)}


def measure_motion(video: np.ndarray) -> dict:
    """Optical flow of a uint8 video [F, H, W, 3] (DIS, px per frame at its own size): dx, dy (median
    translation; + is right / down), zoom (mean radial flow over radius: + magnifies), magnitude (mean),
    peak (95th percentile of the magnitude), moving_dx (mean dx where the magnitude passes MOVING_PX)."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video]
    h, w = grey[0].shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rx, ry = xx - (w - 1) / 2, yy - (h - 1) / 2                                # [h, w]
    per_pair = {k: [] for k in ("dx", "dy", "zoom", "magnitude", "peak", "moving_dx")}
    for a, b in zip(grey[:-1], grey[1:]):
        flow = dis.calc(a, b, None)                                            # [h, w, 2]
        magnitude = np.linalg.norm(flow, axis=-1)                              # [h, w]
        moving = magnitude > MOVING_PX
        per_pair["dx"].append(np.median(flow[..., 0]))
        per_pair["dy"].append(np.median(flow[..., 1]))
        per_pair["zoom"].append(((flow[..., 0] * rx + flow[..., 1] * ry) / (rx ** 2 + ry ** 2 + 1)).mean())
        per_pair["magnitude"].append(magnitude.mean())
        per_pair["peak"].append(np.percentile(magnitude, 95))
        per_pair["moving_dx"].append(flow[..., 0][moving].mean() if moving.any() else 0.0)
    return {k: float(np.mean(v)) for k, v in per_pair.items()}


def follows_caption(motion: str, m: dict, min_px: float = MOVING_PX, min_zoom: float = 0.005) -> bool:
    """Whether measured motion m (measure_motion) matches the caption's motion (the table above)."""
    if motion in DIRECTED:
        key, sign = DIRECTED[motion]
        return m[key] * sign > (min_zoom if key == "zoom" else min_px)
    if motion == "still":
        return m["magnitude"] < min_px
    camera_moves = motion.startswith(("camera", "handheld"))                   # the whole frame moves
    return (m["magnitude"] if camera_moves else m["peak"]) > min_px


def caption_follow_rate(videos, motions) -> float:
    """Fraction of videos uint8 [n, F, H, W, 3] whose motion follows their caption's."""
    return float(np.mean([follows_caption(mo, measure_motion(v)) for v, mo in zip(videos, motions)]))
