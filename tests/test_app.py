"""The page's functions without a browser: the photo check, runs listed from their folders, Stop and Resume reaching
the train.py of a run, and no path from the browser leaving the runs folder."""

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app
import runs

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "astronaut.jpg"


# ---------------------------------------------------------------------- photos

def test_a_photo_comes_back_with_its_face_box_drawn():
    shown, good, notes = app.check_photos([str(PHOTO)])
    assert good == [str(PHOTO)] and notes == "✓ 1 photo(s) ready"
    drawn, original = shown[0][0], np.asarray(Image.open(PHOTO).convert("RGB"))
    changed = np.argwhere((drawn != original).any(axis=2))  # [n, 2] (row, col) of pixels the box covers
    assert len(changed) > 0
    assert (drawn[tuple(changed.T)] == (40, 220, 60)).all()  # only the box's green
    rows, cols = changed[:, 0], changed[:, 1]
    # the box frames the face (skimage's astronaut: her face is around x 170-260, y 60-170 of 512x512)
    assert 140 < cols.min() < 200 < 230 < cols.max() < 290 and 30 < rows.min() < 110 < 150 < rows.max() < 200


def test_a_photo_without_a_face_gets_train_pys_error(tmp_path):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    shown, good, notes = app.check_photos([str(blank), str(PHOTO)])
    assert good == [str(PHOTO)] and len(shown) == 1
    assert notes.startswith(f"✗ wall.png: no face found in {blank} (200×200 px")


def test_photos_of_two_people_get_a_warning_before_training(faces_data):
    same = [str(faces_data / "id01_v1_f0.png"), str(faces_data / "id01_v2_f0.png")]
    assert app.check_photos(same)[2] == "✓ 2 photo(s) ready"
    shown, good, notes = app.check_photos([str(faces_data / "id01_v1_f0.png"), str(faces_data / "id03_v1_f0.png")])
    assert len(good) == 2 and notes.startswith("⚠ ") and "id01_v1_f0.png ~ id03_v1_f0.png" in notes


def test_uploads_are_checked_for_type_and_size_before_they_are_read(tmp_path, monkeypatch):
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    assert app.photo_error(text).startswith("not a photo file (.txt)")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * (2 * 2**20))  # not even a JPEG: read, it would give "cannot read"
    monkeypatch.setattr(app, "MAX_PHOTO_MB", 1)
    assert app.photo_error(big) == "2 MB is more than the page takes (1 MB): resize it, e.g. to 4000 px"


def test_the_settings_become_train_py_flags_and_a_bad_one_gets_train_pys_line(tmp_path):
    flags = app.train_flags("tiny", 5, 3, 2, 7, f" clip:{tmp_path} ", "--frames 5")
    assert flags == ["--model", "tiny", "--identity-steps", "5", "--dpo-identity-steps", "3", "--dpo-dynamic-steps", "3",
                     "--videos-per-prompt", "2", "--seed", "7", "--judge", f"clip:{tmp_path}", "--frames", "5"]
    assert app.flag_error(["--ref", "me.jpg", *flags, "--out", "run"]) is None
    bad = app.train_flags("tiny", -5, 3, 2, 7, "", "")
    assert app.flag_error(["--ref", "me.jpg", *bad, "--out", "run"]) == "--identity-steps must be >= 0 (got -5)"


# ---------------------------------------------------------------------- runs listed from their folders

def make_run(root: Path, name: str, log: str = "", **files) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "train.log").write_text(log)
    for file, text in files.items():
        (folder / file.replace("__", ".")).write_text(text)
    return folder


def test_runs_are_listed_with_the_state_their_folders_hold(tmp_path):
    tqdm = "identity:  33%|███▎      | 2/6 [00:00<00:02,  1.99step/s]\ridentity:  50%|█████     | 3/6 [00:01<00:01,  2.23step/s]"
    make_run(tmp_path, "done", log="report: report.html\n", report__html="<html>")
    make_run(tmp_path, "halted", log=tqdm + "\n\ninterrupted: continue with python train.py --resume\n")
    make_run(tmp_path, "broken", log=tqdm + "\nerror: no face found in photos/00.jpg\n")
    busy = make_run(tmp_path, "busy", log=tqdm)
    (tmp_path / "not-a-run").mkdir()   # no run files: not listed
    (tmp_path / "loose.txt").write_text("")
    with open(busy / ".lock", "a+") as held:  # what run.RunLock holds while train.py works
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        listed = {run.name: run for run in runs.list_runs(tmp_path)}
    assert sorted(listed) == ["broken", "busy", "done", "halted"]
    assert [listed[n].status for n in ("done", "halted", "broken", "busy")] == ["finished", "stopped", "failed", "running"]
    assert (listed["busy"].stage, listed["busy"].step, listed["busy"].total, listed["busy"].eta) == ("identity", 3, 6, "00:01")
    assert listed["broken"].message == "error: no face found in photos/00.jpg"
    assert runs.run_status(busy).status == "failed"  # the lock let go: the train.py is gone, it did not finish


def test_a_run_started_from_a_terminal_shows_its_progress_from_log_jsonl(tmp_path):
    folder = tmp_path / "cli"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"identity_steps": 800, "dpo_identity_steps": 60}))
    records = [{"stage": "setup", "step": 0}, {"stage": "identity", "step": 799, "loss": 0.1},
               {"stage": "dpo_identity_round0", "step": 11, "loss": 0.69}]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"stage": "dpo_id')
    run = runs.list_runs(tmp_path)[0]
    assert (run.stage, run.step, run.total) == ("dpo_identity_round0", 12, 60)


# ---------------------------------------------------------------------- Stop and Resume reach train.py

LOCK_HOLDER = """
import sys, time
from run import RunLock
lock = RunLock(sys.argv[1])
print("holding", flush=True)
try:
    time.sleep(120)
except KeyboardInterrupt:
    print("interrupted: continue with ...", flush=True)
    sys.exit(130)
"""


def test_stop_sends_ctrl_c_to_the_process_holding_the_runs_lock(tmp_path):
    folder = tmp_path / "held"
    folder.mkdir()
    log = open(folder / "train.log", "w")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], cwd=REPO, stdout=log)
    try:
        for _ in range(100):
            if runs.run_status(folder).status == "running":
                break
            time.sleep(0.1)
        assert runs.run_status(folder).status == "running"
        with pytest.raises(runs.RunsError, match="held is running already"):
            runs.resume_run(tmp_path, "held")
        runs.stop_run(tmp_path, "held")
        assert holder.wait(timeout=30) == 130  # KeyboardInterrupt: what Ctrl-C raises
    finally:
        holder.kill()
    assert runs.run_status(folder).status == "stopped"
    with pytest.raises(runs.RunsError, match="held is not running"):
        runs.stop_run(tmp_path, "held")


def test_resume_runs_train_py_with_the_runs_own_flags_and_resume(tmp_path):
    """A folder that holds a run: train.py without --resume refuses it ("already holds a run"); with --resume it gets
    past that check to the model, where --offload-blocks 99 fails (6 blocks). So the second error proves --resume."""
    flags = ["--model", "tiny", "--grad-checkpointing", "--offload-blocks", "99"]
    folder = runs.start_run(tmp_path, "again", [PHOTO], flags, prompts="{person} waving")
    runs._processes[str(folder)].wait(timeout=300)
    assert runs.run_status(folder).message == "error: offload_blocks 99 (+ checkpoint_blocks None) must fit in the " \
                                              "transformer's 6 blocks"
    (folder / "state.json").write_text('{"done": [], "latest": {}}')  # what a run that began leaves
    (folder / "config.json").write_text("{}")
    runs.resume_run(tmp_path, "again")
    runs._processes[str(folder)].wait(timeout=300)
    status = runs.run_status(folder)
    assert status.status == "failed"
    assert status.message == "error: offload_blocks 99 (+ checkpoint_blocks None) must fit in the transformer's 6 blocks"
    assert (folder / "train.log").read_text().count("already holds a run") == 0
    os.remove(folder / "command.json")  # a run from a terminal: the page does not guess its flags
    with pytest.raises(runs.RunsError, match="not started from this page"):
        runs.resume_run(tmp_path, "again")


def test_a_second_start_under_the_same_name_is_refused(tmp_path):
    (tmp_path / "me").mkdir()
    with pytest.raises(runs.RunsError, match="a run named 'me' exists"):
        runs.start_run(tmp_path, "me", [PHOTO], [])


# ---------------------------------------------------------------------- paths from the browser

@pytest.mark.parametrize("name", ["..", "../x", "/etc", "a/b", ".hidden", "", "-rf", "x" * 65])
def test_a_run_name_is_one_plain_folder_name(tmp_path, name):
    with pytest.raises(runs.RunsError, match="is not a run name"):
        runs.run_folder(tmp_path, name)


def test_no_file_outside_the_runs_folder_is_served(tmp_path):
    root = tmp_path / "runs"
    folder = make_run(root, "me")
    (folder / "eval").mkdir()
    (folder / "eval" / "table.md").write_text("| model |")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    make_run(root, "other", report__html="<html>")
    (folder / "link.txt").symlink_to(secret)
    assert runs.run_file(root, "me", "eval/table.md") == (folder / "eval" / "table.md").resolve()
    for relative in ["../../secret.txt", str(secret), "link.txt", "eval/../../../secret.txt", "missing.md", "eval"]:
        assert runs.run_file(root, "me", relative) is None, relative
    assert runs.run_file(root, "me", "../other/report.html") == (root / "other" / "report.html").resolve()  # still inside


def test_the_time_estimate_adds_the_measured_unit_costs_and_is_unknown_elsewhere():
    from cli import PRESETS
    published = PRESETS["published"]
    # by hand: 60 s once + 16 static x 7.5 + 800 x 0.59 + 10 prompts x 4 x 2 sources x 13.8 + 600 DPO x 1.30
    #          + 3 models x 3 prompts x 2 seeds x 16.8 = 60 + 120 + 472 + 1104 + 780 + 302.4 = 2838.4 s
    assert runs.estimate_minutes("NVIDIA H100 80GB HBM3", "wan-1.3b", published) == pytest.approx(2838.4 / 60)
    assert runs.estimate_minutes(None, "wan-1.3b", published) is None
    assert runs.estimate_minutes("NVIDIA H100 80GB HBM3", "wan-14b", published) is None
    assert runs.estimate_minutes("NVIDIA A100", "wan-1.3b", published) is None
