"""Bad inputs a new user hits (issue 20): each gets one clear message naming the file or flag and what to
do, leaves nothing half-made, and the run continues with --resume afterwards.

One tiny run goes through the run-folder mistakes in order, as a user would make them (the `story`
fixture): Ctrl-C; --resume with another photo and another --lr; a disk that fills up; the --resume the
Ctrl-C message printed, with a second train.py started on the same folder while it works. Each test
below checks one of those steps; the rest are quick checks of single inputs.
"""

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import generate
from faces import DlibFaceEncoder, ReferencePhotoError, load_references, read_photo
from lora import LORA_FILE

REPO = Path(__file__).resolve().parents[1]
# The tiny preset at its smallest that still crosses every stage (tests/test_train.py's QUICK, smaller).
SMALL = ["--model", "tiny", "--frames", "5", "--height", "64", "--width", "64", "--identity-steps", "6",
         "--dpo-identity-steps", "2", "--dpo-dynamic-steps", "2", "--num-prompts", "1", "--videos-per-prompt", "3",
         "--static-videos", "1", "--eval-prompts", "1", "--eval-seeds", "1", "--sample-steps", "2",
         "--checkpoint-every", "1", "--rank", "4", "--dyn-margin", "0.05"]

# train.py on a disk that fills up once the run has saved a new checkpoint: from then on every fsync fails
# as a full disk makes it fail (ENOSPC), which is where our writes meet the disk (run.atomic_write).
FULL_DISK = """
import errno, os, runpy, sys
state = os.path.join(sys.argv[sys.argv.index("--out") + 1], "state.json")
def state_text():
    return open(state).read() if os.path.exists(state) else None
before, real_fsync = state_text(), os.fsync
def fsync(fd):
    if state_text() != before:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_fsync(fd)
os.fsync = fsync
sys.path.insert(0, os.getcwd())
runpy.run_path("train.py", run_name="__main__")
"""


def photo(folder: Path, name="astronaut.png", mirrored=False) -> str:
    from skimage import data

    image = Image.fromarray(data.astronaut())
    (ImageOps.mirror(image) if mirrored else image).save(folder / name)
    return str(folder / name)


def start(command, **kwargs):
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process, timeout=300):
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def contents(folder: Path) -> dict:
    """Every file of a run folder but its lock, by content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_clear_error(err: str) -> str:
    """The error line; fails on a traceback."""
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def story(tmp_path_factory, held_train):
    tmp = tmp_path_factory.mktemp("story")
    out, ref = tmp / "run", photo(tmp)
    results = {"out": out}
    # 1. Ctrl-C mid-identity-stage: the run is held (conftest.HOLD) once its first checkpoint is on disk, so the
    #    signal finds it working however fast the machine is (a quick one used to finish before the signal).
    first = held_train(tmp / "first", ["--ref", ref, "--out", str(out), "--token", "ohwx", *SMALL], "identity",
                       cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first.wait_until_held()
    first.process.send_signal(signal.SIGINT)
    results["interrupted"] = finish(first.process)
    printed = shlex.split(results["interrupted"][1].split("continue with ")[-1].strip())
    results["printed"] = printed[:2] == ["python", "train.py"]  # else the rest goes on with our own command
    arguments = printed[2:] if results["printed"] else ["--ref", ref, "--out", str(out), "--token", "ohwx", *SMALL,
                                                        "--resume"]
    resume = [sys.executable, "train.py", *arguments]
    # 2. --resume with another photo and another learning rate.
    before = contents(out)
    other = [arg if arg != ref else photo(tmp, "other.png", mirrored=True) for arg in resume] + ["--lr", "0.001"]
    results["mismatch"] = finish(start(other))
    results["unchanged"] = contents(out) == before
    # 3. The disk fills up after the next checkpoint (the identity stage has checkpoints left to write).
    (tmp / "full_disk.py").write_text(FULL_DISK)
    results["disk_full"] = finish(start([sys.executable, str(tmp / "full_disk.py"), *resume[2:]]))
    results["leftovers"] = [str(p) for p in out.rglob(".*.tmp*")]
    # 4. The printed --resume, held at its first write to the folder (it holds the lock by then) while a second
    #    train.py starts on the same folder; then let go to finish.
    resumed = held_train(tmp / "resumed", resume[2:], "", cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    resumed.wait_until_held()
    results["busy"] = finish(start(resume))
    resumed.release()
    results["resumed_pid"] = resumed.process.pid
    results["resumed"] = finish(resumed.process)
    return results


def test_ctrl_c_says_how_to_continue_and_that_command_finishes_the_run(story):
    code, err = story["interrupted"]
    assert code == 130 and story["printed"], err[-3000:]
    line = one_clear_error(err)
    assert line.startswith("interrupted: continue with python train.py") and line.endswith("--resume")
    assert f"--out {story['out']}" in line
    code, err = story["resumed"]
    assert code == 0, err[-3000:]
    assert (story["out"] / "magicid_lora" / LORA_FILE).is_file()


def test_resume_with_another_photo_or_flag_is_refused_naming_what_differs(story):
    code, err = story["mismatch"]
    assert code == 1
    assert "Traceback" not in err
    assert f"{story['out']} holds a run started with other settings" in err
    assert "--ref: the photos differ: was astronaut.png" in err and "now other.png" in err
    assert "--lr: was 0.002, now 0.001" in err
    assert "new --out" in err.strip().splitlines()[-1]
    assert story["unchanged"]  # nothing in the run folder was touched


def test_a_full_disk_names_the_run_folder_and_resume_continues(story):
    code, err = story["disk_full"]
    assert code == 1
    line = one_clear_error(err)
    assert line.startswith(f"error: the disk holding {story['out']} is full") and line.endswith("--resume")
    assert story["leftovers"] == []  # no half-written temporary files
    assert story["resumed"][0] == 0


def test_a_second_train_py_on_a_busy_run_folder_is_refused(story):
    code, err = story["busy"]
    assert code == 1
    line = one_clear_error(err)
    assert line.startswith(f"error: {story['out']} is in use by another train.py (process {story['resumed_pid']})")
    assert story["resumed"][0] == 0  # the first one finished undisturbed


def test_failed_starts_leave_no_run_folder(tmp_path):
    ref = photo(tmp_path)
    cases = [(["--frames", "8"], 2, "4k+1"),                                     # a flag (tests/test_flags.py)
             (["--prompts", str(tmp_path / "missing.txt")], 1, "missing.txt"),  # checked before the model loads
             (["--grad-checkpointing", "--offload-blocks", "99"], 1, "blocks")]  # found once the model has loaded
    for i, (extra, expected, named) in enumerate(cases):
        out = tmp_path / f"run{i}"
        code, err = finish(start([sys.executable, "train.py", "--ref", ref, "--out", str(out), *SMALL, *extra]))
        assert code == expected and named in one_clear_error(err)
        assert not out.exists()


def test_a_photo_over_pils_size_limit_says_resize_it(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (14_000, 14_000)).save(huge)    # 196 Mpx: over twice PIL's limit, an error there
    large = tmp_path / "large.png"
    Image.new("1", (10_000, 10_000)).save(large)   # 100 Mpx: over the limit, only a warning there
    for path in (huge, large):
        with pytest.raises(ReferencePhotoError, match=f"{path} is too large .* Resize it"):
            read_photo(path)
    out = tmp_path / "run"
    code, err = finish(start([sys.executable, "train.py", "--ref", str(huge), "--out", str(out), *SMALL]))
    assert code == 1 and one_clear_error(err).startswith(f"error: {huge} is too large")
    assert not out.exists()


def test_several_faces_of_different_sizes_warn_and_the_largest_is_used(tmp_path, faces_data):
    from skimage import data

    encoder = DlibFaceEncoder()
    second = read_photo(faces_data / "id02_v1_f0.png")[40:210, 365:535]   # another person's face
    canvas = np.full((700, 700, 3), 200, np.uint8)
    canvas[:512, :512] = data.astronaut()                                               # face ~95 px
    canvas[620:680, 620:680] = np.asarray(Image.fromarray(second).resize((60, 60)))     # face ~45 px
    Image.fromarray(canvas).save(tmp_path / "two.png")
    alone = load_references([photo(tmp_path)], encoder).mean_embedding
    other = load_references([faces_data / "id02_v1_f0.png"], encoder).mean_embedding
    with pytest.warns(UserWarning, match="2 or more faces found; using the largest"):
        chosen = load_references([str(tmp_path / "two.png")], encoder).mean_embedding
    assert chosen @ alone > 0.95 and chosen @ alone > chosen @ other + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one face: no warning
        load_references([photo(tmp_path)], encoder)


def test_generate_takes_the_base_model_and_token_from_the_lora_of_a_run_folder(story, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("{person} waving\n")
    command = [sys.executable, "generate.py", "--lora", str(story["out"]), "--prompts", str(prompts), "--frames", "5",
               "--height", "32", "--width", "32", "--steps", "2", "--out", str(tmp_path)]
    code, err = finish(start(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}))  # were --model lost: no download
    assert code == 0, err[-3000:]
    assert f"using its MagicID LoRA, {story['out'] / 'magicid_lora'}" in err
    assert "model: tiny, the LoRA's base model" in err
    assert (tmp_path / "a_ohwx_person_waving_seed0.mp4").is_file()   # {person} with the LoRA's --token


def test_generate_names_a_corrupt_lora_file(story, tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    whole = (story["out"] / "magicid_lora" / LORA_FILE).read_bytes()
    (lora / LORA_FILE).write_bytes(whole[:len(whole) // 2])                            # cut short
    with pytest.raises(SystemExit) as stopped:
        generate.main(["--model", "tiny", "--lora", str(lora), "--prompt", "x", "--out", str(tmp_path)])
    message = str(stopped.value.code)
    assert message.startswith(f"error: {lora / LORA_FILE} is not a readable LoRA file") and "Copy it again" in message
