"""media.py — videos and images in and out of files, in one array convention.

Every video in magicid is a numpy uint8 array [F, H, W, 3] (RGB). This file turns them into mp4
files (H.264 through imageio's bundled ffmpeg), reads mp4/gif/image files back, and lays frames out
as a PNG contact sheet for people (and reports) to look at.

Exports: write_video, read_video, contact_sheet, write_png, pyplot.
"""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np
from PIL import Image

from run import replacing


def write_video(path: str, video: np.ndarray, fps: int) -> None:
    """video: uint8 [F, H, W, 3] -> an mp4 (or gif) at `path`, written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as partial:  # the temporary name keeps the suffix: imageio picks the format from it
        if partial.suffix == ".mp4":
            # yuv420p plays everywhere; macro_block_size 1 keeps odd sizes exact instead of resizing them.
            iio.imwrite(partial, video, fps=fps, codec="libx264", plugin="FFMPEG", macro_block_size=1,
                        pixelformat="yuv420p", quality=8)
        else:
            iio.imwrite(partial, video, duration=1000 / fps, loop=0)


def read_video(path: str) -> np.ndarray:
    """mp4/gif/png/jpg -> uint8 [F, H, W, 3] (a still image is a 1-frame video)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such video file: {path}")
    if path.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp")):
        frames = np.asarray(Image.open(path).convert("RGB"))
    else:
        frames = np.asarray(iio.imread(path, index=None))
    if frames.ndim == 3:  # a single frame
        frames = frames[None]
    if frames.shape[-1] == 4:
        frames = frames[..., :3]
    return np.ascontiguousarray(frames.astype(np.uint8))


def contact_sheet(video: np.ndarray, columns: int = 8, max_frames: int = 16) -> np.ndarray:
    """video: uint8 [F, H, W, 3] -> one image [rows·H, cols·W, 3] of evenly spaced frames, in reading order.

    `columns` is the widest a row may be. The rows are balanced (cols = ceil(n / rows)), so the last row
    lacks fewer than `rows` frames: 9 frames lay out 5 + 4, never 8 + a lone frame on a black row.
    """
    picks = np.linspace(0, len(video) - 1, min(max_frames, len(video))).round().astype(int)
    frames = video[picks]                                         # [n, H, W, 3]
    rows = -(-len(frames) // columns)
    columns = -(-len(frames) // rows)
    _, height, width, _ = frames.shape
    sheet = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        row, col = divmod(i, columns)
        sheet[row * height:(row + 1) * height, col * width:(col + 1) * width] = frame
    return sheet


def write_png(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)


def pyplot():
    """matplotlib.pyplot drawing off-screen (the Agg backend): figures for PNG files and reports, on machines
    without a display. Imported on first use: most of magicid never draws."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
