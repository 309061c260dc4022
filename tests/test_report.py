"""report.py and media.contact_sheet: the run report says everything the run measured, readably.

The report is rendered from a small run folder of the shape train.py leaves: evaluation rows as
evaluate.evaluate makes them (evaluate.score_video of small static videos of the astronaut, scored
against her photo with dlib; evaluate.summarize), a real repository.Repository, a
pairs_round0.json from the real selection rules, contact sheets from media.contact_sheet and a log
as Run.log writes it. No model runs: these tests are about the page, not the method.
"""

import base64
import html
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's modules are flat top-level files

import evaluate  # noqa: E402
import media  # noqa: E402
import report  # noqa: E402
import sampling  # noqa: E402
from faces import load_references, make_face_encoder  # noqa: E402
from repository import Repository  # noqa: E402

BACKEND = "dlib (test)"
VARIANTS = ["base", "identity stage", "MagicID"]
PROMPTS = ["a sks person surfing a big wave", "a sks person riding a horse at dusk"]
DPO_STEPS = 40
ASTRONAUT = skimage.data.astronaut()  # uint8 [512, 512, 3]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with everything write_report reads; returns (run_dir, results, repo, log, page)."""
    rng = np.random.default_rng(0)
    run_dir = tmp_path_factory.mktemp("run")
    Image.fromarray(ASTRONAUT).save(run_dir / "astronaut.png")
    encoder = make_face_encoder("dlib")
    refs = load_references([run_dir / "astronaut.png"], encoder)
    rows, sheets = [], {}
    for v, variant in enumerate(VARIANTS):
        for p, prompt in enumerate(PROMPTS):  # rows as evaluate.evaluate makes them: real scores of a video
            video = sampling.static_video(ASTRONAUT[40:220, 130:310], 9, 96, 96, jitter=0.2, rng=rng)  # [F, H, W, 3]
            rows.append({"variant": variant, "prompt": prompt, "seed": 10_000 + 100 * p,
                         **evaluate.score_video(video, prompt, refs, encoder, 16.0)})
            if p == 0:
                sheets[variant] = str(run_dir / "eval" / f"{v}_p0_s0.png")
                media.write_png(sheets[variant], media.contact_sheet(video))
    results = {"rows": rows, "summary": evaluate.summarize(rows, VARIANTS), "sheets": sheets}

    repo = Repository(run_dir / "repository")
    for seed in range(2):
        repo.add(torch.randn(4, 3, 8, 8), "caption", "static", {"r_id": 0.95, "r_dyn": 0.0}, seed)
    for prompt in PROMPTS:
        for seed in range(4):
            repo.add(torch.randn(4, 3, 8, 8), prompt, "initial",
                     {"r_id": float(rng.uniform(0.3, 0.9)), "r_dyn": float(rng.uniform(0, 8))}, seed)
    table = repo.table()
    columns = (table["r_id"], table["r_dyn"], table["prompt"], table["source"])
    selections = [sampling.select_identity_pairs(*columns, delta_id=0.03),
                  sampling.select_dynamic_pairs(*columns, delta_id=0.03)]
    pairs = {sel.rule: {"pairs": [[table["id"][w], table["id"][l]] for w, l in sel.pairs], "prompts": sel.prompts}
             for sel in selections}
    pairs["summary"] = sampling.summary(*selections)
    (run_dir / "pairs_round0.json").write_text(json.dumps(pairs, indent=1))

    log = [{"stage": "setup", "step": 0, "id_backend": BACKEND}]
    log += [{"stage": "identity", "step": k, "loss": 1 / (k + 1), "lr": 1e-3} for k in range(30)]
    for k in range(DPO_STEPS):  # the DPO stage has learnt its pairs: accuracy 1, margin 50, to the end
        log.append({"stage": "dpo_identity_round0", "step": k, "loss": 0.1, "implicit_accuracy": 1.0,
                    "reward_margin": 50.0, "lr": 2e-5})
    page = report.write_report(run_dir, results, repo, log, BACKEND).read_text(encoding="utf-8")
    return run_dir, results, repo, log, page


# ---- the comparison table keeps its legend and footnotes --------------------------------------

def test_every_line_of_the_markdown_table_outside_the_grid_reaches_the_page(run):
    _, results, _, _, page = run
    markdown = evaluate.markdown_table(results["summary"], BACKEND)
    prose = [line.strip() for line in markdown.splitlines() if line.strip() and not line.startswith("|")]
    assert any(line.startswith("¹") for line in prose)   # the fixture has no CLIP: the footnote is due
    for line in prose:
        assert f"<p>{html.escape(line)}</p>" in page, f"dropped from the report: {line!r}"
    assert "not available ¹" in page


def test_markdown_to_html_worked_example():
    markdown = "caption\n\n| model | x |\n|---|---|\n| a | 1 ¹ |\n| b | 2 |\n\nlegend <x>\n¹ footnote\n"
    assert report.markdown_to_html(markdown) == (
        "<p>caption</p>\n"
        "<table><tr><th>model</th><th>x</th></tr><tr><td>a</td><td>1 ¹</td></tr><tr><td>b</td><td>2</td></tr></table>\n"
        "<p>legend &lt;x&gt;</p>\n<p>¹ footnote</p>")


# ---- smoothed curves do not fall at the ends ---------------------------------------------------

def test_moving_average_hand_worked():
    # window 3: the ends average the 2 values that exist; the middle averages 3
    assert report.moving_average([0, 0, 0, 3, 3, 3], window=3).tolist() == [0, 0, 1, 2, 3, 3]
    # window 5 on 1..5: t=0 -> mean(1,2,3), t=1 -> mean(1..4), t=2 -> mean(1..5), ...
    assert report.moving_average([1, 2, 3, 4, 5], window=5).tolist() == [2, 2.5, 3, 3.5, 4]


@pytest.mark.parametrize("seed", range(3))
def test_moving_average_matches_a_float64_loop(seed):
    rng = np.random.default_rng(seed)
    values, window = rng.normal(size=int(rng.integers(1, 40))), int(rng.integers(1, 12))
    half = window // 2
    expected = [np.mean(values[max(0, t - half):t + half + 1]) for t in range(len(values))]
    np.testing.assert_allclose(report.moving_average(values, window), expected, rtol=1e-12)


def test_a_constant_curve_stays_constant_to_its_last_step():
    np.testing.assert_allclose(report.moving_average(np.ones(25)), np.ones(25), rtol=1e-12)


def test_the_plotted_dpo_curves_end_at_the_logged_values(run):
    _, _, _, log, _ = run
    figure = report.training_figure(log)
    _, accuracy, margin = figure.axes
    assert len(accuracy.lines) == 1 and len(accuracy.lines[0].get_ydata()) == DPO_STEPS
    np.testing.assert_allclose(accuracy.lines[0].get_ydata(), 1.0)   # the log holds 1.0 at every step
    np.testing.assert_allclose(margin.lines[0].get_ydata(), 50.0)


# ---- the page layout ---------------------------------------------------------------------------

def test_every_plot_fits_the_1100_px_page_and_images_scale_down(run):
    _, _, _, _, page = run
    assert "max-width:1100px" in page and "img{max-width:100%}" in page  # contact sheets may be wider
    assert "overflow-x:auto" in page                                        # and the comparison table
    widths = [Image.open(io.BytesIO(base64.b64decode(data))).width
              for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]
    assert len(widths) == 3 + len(VARIANTS)       # ID curve, repository, training; one sheet per model
    assert max(widths[:3]) <= 1100
    assert widths[2] >= 1000                      # the training figure uses the page, not a thumbnail


def test_pair_summary_is_a_table_with_readable_symbols(run):
    run_dir, _, _, _, page = run
    summary = json.loads((run_dir / "pairs_round0.json").read_text())["summary"]
    assert "\\u03b4" not in page and "\\u03c4" not in page
    section = page.split("<h2>Preference repository and pairs</h2>")[1].split("<img")[0]
    cells = re.findall(r"<td>(.*?)</td>", section)
    for rule, info in summary.items():
        row = cells[cells.index(rule):cells.index(rule) + 4]
        assert row[1:3] == [str(info["pairs"]), str(info["candidates"])]
        for reason, count in info["rejected"].items():
            assert f"{html.escape(reason)}: {count}" in row[3]
    assert "id gap &lt; δ_id" in section


def test_each_sample_video_is_labelled_with_its_prompt(run):
    _, results, _, _, page = run
    for variant in VARIANTS:
        shown = page.split(f"<h3>{html.escape(variant)}</h3>")[1].split("<img")[0]
        first = next(r for r in results["rows"] if r["variant"] == variant)  # evaluate's sheet: p0, s0
        assert html.escape(first["prompt"]) in shown and f"seed {first['seed']}" in shown


# ---- contact sheets ----------------------------------------------------------------------------

@pytest.mark.parametrize("frames, max_frames, row_lengths", [
    (9, 16, [5, 4]), (16, 16, [8, 8]), (17, 16, [8, 8]), (17, 17, [6, 6, 5]), (3, 16, [3]), (1, 16, [1])])
def test_contact_sheet_rows_are_balanced_and_in_reading_order(frames, max_frames, row_lengths):
    height, width = 6, 10
    video = np.stack([np.full((height, width, 3), 10 + k, np.uint8) for k in range(frames)])  # frame k is 10 + k
    sheet = media.contact_sheet(video, columns=8, max_frames=max_frames)
    rows, columns = sheet.shape[0] // height, sheet.shape[1] // width
    cells = sheet[::height, ::width, 0].astype(int)                 # [rows, columns] one pixel per cell
    assert [int((row > 0).sum()) for row in cells] == row_lengths   # no lone frame on a black row
    shown = cells[cells > 0] - 10                                   # reading order: row by row
    picks = np.linspace(0, frames - 1, min(max_frames, frames)).round().astype(int)
    assert shown.tolist() == picks.tolist() and (rows, columns) == (len(row_lengths), row_lengths[0])


@pytest.mark.parametrize("judged", [False, True])
def test_the_scatter_circles_the_frontier_the_dynamic_rule_uses(tmp_path, judged):
    # One prompt, two generated videos: B is dominated in (r_id, r_dyn) but not once r_sem counts.
    repo = Repository(tmp_path)
    for seed, (r_id, r_dyn, r_sem) in enumerate([(0.9, 5.0, 0.1), (0.5, 2.0, 0.9)]):
        rewards = {"r_id": r_id, "r_dyn": r_dyn, "r_sem": r_sem if judged else None}
        repo.add(torch.zeros(4, 1, 2, 2), "a sks person waves", "initial", rewards, seed=seed)
    fig = report._plot_repository(repo, {})
    frontier = [c for c in fig.axes[0].collections if len(c.get_facecolor()) == 0]  # the hollow circles
    assert sum(len(c.get_offsets()) for c in frontier) == (2 if judged else 1)
    assert ("r_sem" in fig.axes[0].get_title()) == judged
