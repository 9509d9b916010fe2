"""What the README, the Makefile, the notebook and demo.py promise a newcomer, checked against each other and against
what the commands do: the demo's duration stated one way, `make install` saying what it installs, `make notebook`."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import demo
import utils

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_duration_is_stated_one_way_everywhere():
    """It was 10 minutes in the README, 7 to 8 in the Makefile and the notebook, 8 in demo.py."""
    minutes = round(sum(demo.expected_minutes(demo.parse_args([]))))  # what demo.py prints at its start
    stated = {
        "README.md": re.findall(r"make demo .*?about (\d+) minutes", (ROOT / "README.md").read_text()),
        "Makefile": re.findall(r"## demo: .*?about (\d+) minutes", (ROOT / "Makefile").read_text()),
        "notebook": re.findall(r"`make demo` runs .*?in about (\d+) minutes", " ".join(
            (ROOT / "notebooks" / "build_walkthrough.py").read_text().split())),
        "demo.py": re.findall(r"About (\d+)\s+minutes", demo.__doc__),
    }
    assert all(stated.values()), stated
    assert {where: set(map(int, found)) for where, found in stated.items()} == {w: {minutes} for w in stated}
    assert not re.search(r"7 to 8 min", " ".join((ROOT / p).read_text() for p in [
        "README.md", "Makefile", "demo.py", "notebooks/build_walkthrough.py"]))


def test_progress_names_the_step_and_the_time_left():
    progress = demo.Progress([1.0, 3.0])
    assert progress.next_step() == "[step 1 of 2; 0.0 min so far, about 4 min left]"
    progress.started -= 120  # the first step took 2 minutes, twice what was expected: the rest takes twice as long
    assert progress.next_step() == "[step 2 of 2; 2 min so far, about 6 min left]"


def test_missing_requirements_names_what_pip_would_install(tmp_path):
    (tmp_path / "base.txt").write_text("# comment\ntorch>=2.4  # present\nno-such-package-xyz>=1\n")
    (tmp_path / "dev.txt").write_text("-r base.txt\npytest<1\nnumpy>=1\n")
    pytest_version = utils.importlib.metadata.version("pytest")
    assert utils.missing_requirements(tmp_path / "dev.txt") == [
        "no-such-package-xyz>=1 (installed: none)", f"pytest<1 (installed: {pytest_version})"]
    assert utils.missing_requirements(ROOT / "requirements-dev.txt") == []  # this environment has them all


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_install_says_what_it_does_and_make_notebook_installs_jupyterlab():
    """On a ready machine `make install` prints one line and runs no pip; `make notebook` (the README's way to open
    the notebook: `jupyter lab` alone failed after every make target) installs JupyterLab where it is missing."""
    # as a user runs it from a shell: under `make test` (CI) the inherited MAKELEVEL would make this a sub-make,
    # which prints "Entering directory" lines a user never sees
    shell = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    ready = subprocess.run(["make", "install", f"PYTHON={utils.sys.executable}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=shell)
    assert ready.returncode == 0 and ready.stdout.strip().splitlines() == [
        "make install: requirements.txt: every requirement is installed"], ready.stdout + ready.stderr
    planned = subprocess.run(["make", "-n", "notebook"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env=shell).stdout
    assert "pip install jupyterlab" in planned and "jupyter lab notebooks/roberta_walkthrough.ipynb" in planned
    assert (ROOT / "notebooks" / "roberta_walkthrough.ipynb").is_file()
    assert "`make notebook`" in (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_ctrl_c_during_make_demo_is_one_line(tmp_path):
    """Ctrl-C reaches the demo and the script it runs (one process group): train.py saved a checkpoint and exited 0,
    and the demo ended in a KeyboardInterrupt traceback (or, had only train.py been stopped, went on without a
    model)."""
    process = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--output_dir", str(tmp_path / "demo"),
                                "--pretraining_steps", "3000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stdout:
        if line.startswith("step "):  # pretraining has begun
            break
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ("demo: stopped by Ctrl-C during 'pretrain a small RoBERTa (masked "
                                               "language modelling)'; the demo does not resume: `make demo` starts "
                                               "it again")
