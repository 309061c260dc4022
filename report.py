"""report.py — one self-contained HTML page that says how a MagicID run went (opens offline).

Sections: the reward table of base / identity-stage / MagicID on held-out prompts (evaluate.py); the
repository as an (r_id, r_dyn) scatter with each prompt's Pareto frontier and the chosen pairs drawn
(identity pairs: static-first, dynamic pairs: frontier-based; sampling.py); loss, implicit accuracy
and reward margin per training stage (train.py's log); the ID curve over the video length; and a
contact sheet of one held-out video per model. Plots are PNGs embedded as base64, so the file is
the whole report.

Exports: write_report.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

import evaluate
from sampling import pareto_frontier

SOURCE_COLORS = {"static": "#888888", "initial": "#1f77b4", "finetuned": "#d62728"}


def write_report(run_dir: Path, results: dict, repo, log: list[dict], backend: str) -> Path:
    run_dir = Path(run_dir)
    evaluate.write_outputs(results, run_dir / "eval", backend)
    pairs = sorted(run_dir.glob("pairs_round*.json"))
    pairs = json.loads(pairs[-1].read_text()) if pairs else {}
    table = evaluate.markdown_table(results["summary"], backend)
    parts = [
        "<h1>MagicID run report</h1>",
        f"<p>run folder: <code>{html.escape(str(run_dir.resolve()))}</code> · ID encoder: {html.escape(backend)}</p>",
        "<h2>Held-out prompts: base vs identity stage vs MagicID</h2>", _markdown_table_to_html(table),
        _png(evaluate.id_curve_figure(results["summary"])),
        "<h2>Preference repository and pairs</h2>",
        f"<pre>{html.escape(json.dumps(pairs.get('summary', {}), indent=1))}</pre>",
        _png(_plot_repository(repo, pairs)),
        "<h2>Training</h2>", _png(_plot_training(log)),
        "<h2>One held-out video per model</h2>",
    ]
    for name, sheet in results["sheets"].items():
        parts.append(f"<h3>{html.escape(name)}</h3><img src='data:image/png;base64,"
                     f"{base64.b64encode(Path(sheet).read_bytes()).decode()}' style='max-width:100%'>")
    page = ("<!doctype html><meta charset='utf-8'><title>MagicID report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}</style>" + "\n".join(parts))
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _plot_repository(repo, pairs: dict):
    """r_id vs r_dyn of every stored video, per-prompt frontiers circled, pairs as winner→loser lines."""
    plt = _pyplot()
    table = repo.table()
    index = {video_id: i for i, video_id in enumerate(table["id"])}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for source, color in SOURCE_COLORS.items():
        mask = table["source"] == source
        ax.scatter(table["r_id"][mask], table["r_dyn"][mask], s=18, c=color, label=source, zorder=3)
    generated = table["source"] != "static"
    for prompt in set(table["prompt"][generated]):
        members = np.flatnonzero(generated & (table["prompt"] == prompt))
        front = members[pareto_frontier(np.stack([table["r_id"][members], table["r_dyn"][members]], 1))]
        ax.scatter(table["r_id"][front], table["r_dyn"][front], s=70, facecolors="none", edgecolors="k", zorder=4)
    for rule, style in (("identity", ":"), ("dynamic", "-")):
        for winner, loser in pairs.get(rule, {}).get("pairs", []):
            w, l = index.get(winner), index.get(loser)
            if w is not None and l is not None:
                ax.plot([table["r_id"][w], table["r_id"][l]], [table["r_dyn"][w], table["r_dyn"][l]],
                        style, color="green" if rule == "dynamic" else "purple", lw=0.7, alpha=0.6, zorder=2)
    ax.set(xlabel="r_id (identity)", ylabel="r_dyn (motion, px at 256-px side)",
           title="repository: circles = per-prompt Pareto frontier; purple dotted = identity pairs, green = dynamic")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    return fig


def _plot_training(log: list[dict]):
    plt = _pyplot()
    stages = list(dict.fromkeys(r["stage"] for r in log if "loss" in r))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for stage in stages:
        records = sorted((r for r in log if r["stage"] == stage), key=lambda r: r["step"])
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r["loss"] for r in records], label=stage, lw=0.8)
        if "implicit_accuracy" in records[0]:
            axes[1].plot(steps, _smooth([r["implicit_accuracy"] for r in records]), label=stage, lw=0.8)
            axes[2].plot(steps, _smooth([r["reward_margin"] for r in records]), label=stage, lw=0.8)
    for ax, title in zip(axes, ("loss", "implicit accuracy (smoothed)", "implicit reward margin (smoothed)")):
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _smooth(values, window: int = 10):
    values = np.asarray(values, dtype=float)
    kernel = np.ones(min(window, len(values))) / min(window, len(values))
    return np.convolve(values, kernel, mode="same")


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _markdown_table_to_html(markdown: str) -> str:
    lines = [line for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|---")]
    rows = [[html.escape(cell.strip()) for cell in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
    caption = html.escape(markdown.splitlines()[0])
    return f"<p>{caption}</p><table><tr>{head}</tr>{body}</table>"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
