"""report.py — one self-contained HTML page that says how a MagicID run went (opens offline).

Sections: the reward table of base / identity-stage / MagicID on held-out prompts (evaluate.py); the
repository as an (r_id, r_dyn) scatter with each prompt's Pareto frontier and the chosen pairs drawn
(identity pairs: static-first, dynamic pairs: frontier-based; sampling.py); loss, implicit accuracy
and reward margin per training stage (train.py's log); the ID curve over the video length; and a
contact sheet of one held-out video per model. Plots are PNGs embedded as base64, so the file is
the whole report.

Exports: write_report, and its parts markdown_to_html, training_figure, moving_average.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

import evaluate
import media
from sampling import pareto_frontier

SOURCE_COLORS = {"static": "#888888", "initial": "#1f77b4", "finetuned": "#d62728"}
PAGE_WIDTH_PX = 1100                    # the page's column; no figure is wider
DPI = 110
FIGURE_WIDTH_IN = PAGE_WIDTH_PX / DPI   # the training figure's three panels fill the column
SMOOTHING = 9                           # steps in the moving average of the DPO curves (odd: centred)


def write_report(run_dir: Path, results: dict, repo, log: list[dict], backend: str) -> Path:
    """report.html in run_dir (and evaluate.py's table, CSVs and plots in run_dir/eval); returns its path.

    results: evaluate.evaluate's {"rows", "summary", "sheets"}; repo: the repository.Repository the pairs
    came from; log: the run's log.jsonl records ({"stage", "step", metrics...}); backend: the ID encoder.
    """
    run_dir = Path(run_dir)
    evaluate.write_outputs(results, run_dir / "eval", backend)
    pair_files = sorted(run_dir.glob("pairs_round*.json"))
    pairs = json.loads(pair_files[-1].read_text()) if pair_files else {}
    parts = [
        "<h1>MagicID run report</h1>",
        f"<p>run folder: <code>{html.escape(str(run_dir.resolve()))}</code> · ID encoder: {html.escape(backend)}</p>",
        "<h2>Held-out prompts: base vs identity stage vs MagicID</h2>",
        markdown_to_html(evaluate.markdown_table(results["summary"], backend)),
        _png(evaluate.id_curve_figure(results["summary"])),
        "<h2>Preference repository and pairs</h2>",
        _pair_summary_table(pairs.get("summary", {}), pair_files[-1].name if pair_files else None),
        _png(_plot_repository(repo, pairs)),
        "<h2>Training</h2>", _png(training_figure(log)),
        "<h2>One held-out video per model</h2>",
    ]
    for name, sheet in results["sheets"].items():
        parts += [f"<h3>{html.escape(name)}</h3>", _sheet_caption(name, results["rows"]),
                  f"<img src='data:image/png;base64,{base64.b64encode(Path(sheet).read_bytes()).decode()}'>"]
    page = ("<!doctype html><meta charset='utf-8'><title>MagicID report</title>"
            f"<style>body{{font-family:sans-serif;max-width:{PAGE_WIDTH_PX}px;margin:auto}}img{{max-width:100%}}"
            "table{border-collapse:collapse;display:block;overflow-x:auto}"   # a wide table scrolls in the column
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
            "</style>\n" + "\n".join(parts))
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def markdown_to_html(markdown: str) -> str:
    """evaluate.markdown_table's text as HTML: each run of |-lines a <table> (first line the header),
    every other non-blank line a paragraph, so captions, legends and footnotes (¹ ...) all stay."""
    out, table = [], []
    for line in markdown.splitlines() + [""]:                 # the blank line closes a final table
        if line.startswith("|"):
            if not set(line) <= set("|-: "):                  # the |---|---| separator carries no cells
                table.append([html.escape(cell.strip()) for cell in line.strip().strip("|").split("|")])
            continue
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
            table = []
        if line.strip():
            out.append(f"<p>{html.escape(line.strip())}</p>")
    return "\n".join(out)


def training_figure(log: list[dict]):
    """Loss, implicit accuracy and implicit reward margin against the step, one line per stage.
    FIGURE_WIDTH_IN · DPI = the page width, so the three panels are shown at their own size."""
    plt = media.pyplot()
    stages = list(dict.fromkeys(r["stage"] for r in log if "loss" in r))
    fig, axes = plt.subplots(1, 3, figsize=(FIGURE_WIDTH_IN, 3.2))
    for k, stage in enumerate(stages):
        records = sorted((r for r in log if r["stage"] == stage), key=lambda r: r["step"])
        steps = [r["step"] for r in records]
        style = dict(label=stage, lw=0.8, color=f"C{k}")   # one colour per stage in all three panels
        axes[0].plot(steps, [r["loss"] for r in records], **style)
        if "implicit_accuracy" in records[0]:
            axes[1].plot(steps, moving_average([r["implicit_accuracy"] for r in records]), **style)
            axes[2].plot(steps, moving_average([r["reward_margin"] for r in records]), **style)
    for ax, title in zip(axes, ("loss", f"implicit accuracy (mean of {SMOOTHING} steps)",
                                f"implicit reward margin (mean of {SMOOTHING} steps)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def moving_average(values, window: int = SMOOTHING) -> np.ndarray:
    """Centred moving average, values [T] -> [T]: point t is the mean of the values that exist within
    window//2 steps of it. Near the ends the window is cut short rather than padded with zeros
    (np.convolve(mode="same") would pull a curve that ends at 1.0 down towards 0 over its last steps)."""
    values = np.asarray(values, dtype=float)
    t = np.arange(len(values))
    low, high = np.maximum(t - window // 2, 0), np.minimum(t + window // 2 + 1, len(values))  # [T] each
    running = np.concatenate([[0.0], np.cumsum(values)])     # running[k] = Σ values[:k]
    return (running[high] - running[low]) / (high - low)


def _pair_summary_table(summary: dict, source: str | None) -> str:
    """sampling.summary's {rule: {pairs, candidates, rejected: {reason: count}}} as a table."""
    if not summary:
        return "<p>No pairs were selected (no pairs_round*.json in the run folder).</p>"
    rows = "".join(
        f"<tr><td>{html.escape(rule)}</td><td>{info['pairs']}</td><td>{info['candidates']}</td><td>"
        + "<br>".join(f"{html.escape(reason)}: {count}" for reason, count in info["rejected"].items())
        + "</td></tr>" for rule, info in summary.items())
    return (f"<p>Pair selection ({html.escape(source)}): candidates are counted as pairs of videos, except "
            "where a reason says videos; each candidate turned down is charged to the first rule it fails.</p>"
            "<table><tr><th>rule</th><th>pairs</th><th>candidates</th><th>turned down (reason: count)</th></tr>"
            f"{rows}</table>")


def _sheet_caption(variant: str, rows: list[dict]) -> str:
    """The prompt and scores of the video a contact sheet shows: the variant's first evaluated video
    (evaluate.evaluate draws each sheet from its variant's first prompt and seed)."""
    row = next((r for r in rows if r["variant"] == variant), None)
    if row is None:
        return ""
    return (f"<p>prompt: <q>{html.escape(row['prompt'])}</q> · seed {row['seed']} · "
            f"r_id {row['r_id']:.3f} · r_dyn {row['r_dyn']:.2f} px</p>")


def _plot_repository(repo, pairs: dict):
    """r_id vs r_dyn of every stored video, per-prompt frontiers circled, pairs as winner→loser lines."""
    plt = media.pyplot()
    table = repo.table()
    index = {video_id: i for i, video_id in enumerate(table["id"])}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for source, color in SOURCE_COLORS.items():
        mask = table["source"] == source
        ax.scatter(table["r_id"][mask], table["r_dyn"][mask], s=18, c=color, label=source, zorder=3)
    generated = table["source"] != "static"
    # With a prompt judge the dynamic rule's frontier is over (r_id, r_dyn, r_sem): circle that one.
    judged = generated.any() and not np.isnan(table["r_sem"][generated]).any()
    objectives = ("r_id", "r_dyn", "r_sem") if judged else ("r_id", "r_dyn")
    for prompt in set(table["prompt"][generated]):
        members = np.flatnonzero(generated & (table["prompt"] == prompt))
        front = members[pareto_frontier(np.stack([table[o][members] for o in objectives], 1))]
        ax.scatter(table["r_id"][front], table["r_dyn"][front], s=70, facecolors="none", edgecolors="k", zorder=4)
    for rule, style in (("identity", ":"), ("dynamic", "-")):
        for winner, loser in pairs.get(rule, {}).get("pairs", []):
            w, l = index.get(winner), index.get(loser)
            if w is not None and l is not None:
                ax.plot([table["r_id"][w], table["r_id"][l]], [table["r_dyn"][w], table["r_dyn"][l]],
                        style, color="green" if rule == "dynamic" else "purple", lw=0.7, alpha=0.6, zorder=2)
    ax.set(xlabel="r_id (identity)", ylabel="r_dyn (motion, px at 256-px side)",
           title=f"repository: circles = per-prompt Pareto frontier over ({', '.join(objectives)}); "
                 "purple dotted = identity pairs, green = dynamic")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    return fig


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    media.pyplot().close(fig)
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
