"""folders.py: which output folders may be written or replaced, one run per folder, verified files."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import hold_lock_in_another_process

import folders
from folders import FolderLock, check_output_folder
from qa_run_folder import QA_RUN
from run_folder import PRETRAINING_RUN
from store import STORE
from utils import UsageError

ROOT = Path(__file__).resolve().parent.parent


def make_run(folder: Path, *extra: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "args.json").write_text("{}")
    (folder / "checkpoints" / "step_5").mkdir(parents=True)
    for name in extra:
        (folder / name).write_text("the user's")
    return folder


def test_new_and_empty_folders_are_accepted(tmp_path):
    assert check_output_folder(tmp_path / "new", STORE, flag="x", overwrite=False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".lock").write_text("")  # a lock file alone does not make a folder taken
    check_output_folder(tmp_path / "empty", STORE, flag="x", overwrite=False)


def test_a_folder_of_the_same_kind_needs_overwrite_or_resume(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(UsageError, match="already holds a pretraining run folder; pass --resume_from_checkpoint"):
        check_output_folder(run, PRETRAINING_RUN, flag="runs/run", overwrite=False)
    check_output_folder(run, PRETRAINING_RUN, flag="runs/run", overwrite=True)
    check_output_folder(run, PRETRAINING_RUN, flag="runs/run", overwrite=False, resuming=True)


@pytest.mark.parametrize("kind", [STORE, PRETRAINING_RUN, QA_RUN])
def test_overwrite_refuses_a_folder_that_is_not_the_scripts_own(tmp_path, kind):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "mytext.txt").write_text("precious")
    with pytest.raises(UsageError, match=f"{kind.script} did not write.*even --overwrite leaves it alone"):
        check_output_folder(tmp_path / "corpus", kind, flag="out", overwrite=True)
    assert (tmp_path / "corpus" / "mytext.txt").read_text() == "precious"
    # without --overwrite nothing would be removed: the script may write beside a file it never makes (a log)
    check_output_folder(tmp_path / "corpus", kind, flag="out", overwrite=False)
    own_name = next(name for name in kind.made if name not in kind.records and name != folders.LOCK_FILE)
    (tmp_path / "corpus" / own_name).mkdir()  # but not into a folder holding one of its own names, unrecorded
    with pytest.raises(UsageError, match="did not write"):
        check_output_folder(tmp_path / "corpus", kind, flag="out", overwrite=False)
    # a QA run folder is not a pretraining run: each script recognises only its own record
    if kind is not PRETRAINING_RUN:
        with pytest.raises(UsageError, match="did not write"):
            check_output_folder(make_run(tmp_path / "pretraining"), kind, flag="out", overwrite=True)


def test_precious_folders_are_refused_even_empty_or_with_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for folder, message in [(".", "current directory"), (str(tmp_path.parent), "current directory or one of its"),
                            ("/", "one of its parents"), (str(Path.home()), "home folder")]:
        with pytest.raises(UsageError, match=message):
            check_output_folder(folder, PRETRAINING_RUN, flag="f", overwrite=True)
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(UsageError, match="git repository"):
        check_output_folder(tmp_path / "repo", STORE, flag="f", overwrite=True)


def test_an_output_folder_that_is_or_holds_an_input_is_refused(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "mytext.txt").write_text("precious")
    for output in (corpus, tmp_path):
        with pytest.raises(UsageError, match="is or holds --text_files .*an input of this run"):
            check_output_folder(output, STORE, flag="--path_to_data_store", overwrite=True,
                                inputs={"--text_files": corpus / "mytext.txt"})
    # an output folder inside an input's folder destroys nothing
    check_output_folder(corpus / "store", STORE, flag="s", overwrite=True,
                        inputs={"--text_files": corpus / "mytext.txt"})


def test_remove_own_outputs_keeps_what_the_script_did_not_make(tmp_path):
    run = make_run(tmp_path / "run", "train.log", "notes.txt")
    (run / "metrics.jsonl").write_text("")
    kept = folders.remove_own_outputs(run, PRETRAINING_RUN)
    assert kept == ["notes.txt", "train.log"]
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "train.log"]


def test_a_second_writer_is_refused_while_the_first_lives_and_admitted_after(tmp_path):
    holder = hold_lock_in_another_process(tmp_path / "run")
    try:
        with pytest.raises(UsageError, match=f"in use by another run \\(pid {holder.pid} on "):
            FolderLock(tmp_path / "run", flag="runs/run").acquire()
        with pytest.raises(UsageError, match="in use"):
            FolderLock(tmp_path / "run", flag="runs/run", shared=True).acquire()
    finally:
        holder.kill()
        holder.wait()
    FolderLock(tmp_path / "run", flag="runs/run").acquire().release()  # a killed holder leaves no stale lock


def test_readers_share_a_lock_that_keeps_a_writer_out(tmp_path):
    # The lock file still records the long-gone run that made the store; the message names the reader holding it.
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / ".lock").write_text(json.dumps({"pid": 999_999_999, "host": "h", "since": "x"}))
    holder = hold_lock_in_another_process(tmp_path / "store", shared=True)
    try:
        FolderLock(tmp_path / "store", flag="s", shared=True).acquire().release()
        with pytest.raises(UsageError, match=f"in use by another run \\(pid {holder.pid} on .*: python.* -c "):
            FolderLock(tmp_path / "store", flag="s").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_forked_children_do_not_keep_its_lock(tmp_path):
    """A run killed with SIGKILL while its DataLoader workers (forked children holding the lock file open) live on:
    its lock dies with it, so a scheduler can restart the job at once."""
    code = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from folders import FolderLock
        FolderLock({str(tmp_path / "run")!r}, flag="f").acquire()
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
    """)
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = int(run.stdout.readline())
    try:
        with pytest.raises(UsageError, match=f"in use by another run \\(pid {run.pid} on "):
            FolderLock(tmp_path / "run", flag="f").acquire()
        run.kill()
        run.wait()
        assert folders.pid_alive(worker)  # the worker still holds the lock file open
        FolderLock(tmp_path / "run", flag="f").acquire().release()
    finally:
        os.kill(worker, signal.SIGKILL)


def test_one_process_never_takes_a_lock_twice_nor_drops_it_by_looking(tmp_path):
    first = FolderLock(tmp_path, flag="f").acquire()
    with pytest.raises(UsageError, match="in use by another run \\(pid .*this process"):
        FolderLock(tmp_path, flag="f").acquire()
    with pytest.raises(UsageError, match="in use"):
        folders.check_in_use(tmp_path, "f")
    holder = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from folders "
                             f"import FolderLock; FolderLock({str(tmp_path)!r}, flag='f').acquire()"],
                            capture_output=True, text=True)
    assert "in use by another run" in holder.stderr  # still held after the refusals above
    first.release()
    folders.check_in_use(tmp_path, "f")


def test_pid_file_lock_where_flock_is_unsupported(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_flock)
    first = FolderLock(tmp_path, flag="f").acquire()
    with pytest.raises(UsageError, match="in use by another run"):
        FolderLock(tmp_path, flag="f").acquire()
    first.release()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname(), "since": "x"}))
    FolderLock(tmp_path, flag="f").acquire().release()  # the lock of a dead process on this host is taken over


def test_manifest_detects_truncation_corruption_and_missing_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "sub" / "b.json").write_text("{}")
    manifest = folders.file_manifest(tmp_path)
    assert set(manifest) == {"a.bin", "sub/b.json"} and manifest["a.bin"]["bytes"] == 1000
    assert folders.verify_manifest(tmp_path, manifest) is None
    (tmp_path / "a.bin").write_bytes(b"x" * 999 + b"y")
    assert "does not match its checksum" in folders.verify_manifest(tmp_path, manifest)
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    assert "has 10 bytes, 1,000 when saved" in folders.verify_manifest(tmp_path, manifest)
    (tmp_path / "sub" / "b.json").unlink()
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    assert folders.verify_manifest(tmp_path, manifest) == "sub/b.json is missing"


def test_a_lock_recorded_by_another_host_says_what_to_do_there(tmp_path):
    """On a filesystem shared by several nodes the recorded pid belongs to another machine: it is not looked up
    here (a process of this host with the same pid would be named instead), and the message says what to do."""
    from folders import LOCK_FILE, describe_holder

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "node-17.cluster", "since": "2026-12-01 10:00:00"}))
    said = describe_holder(tmp_path / LOCK_FILE)
    assert said.startswith("pid 1 on host node-17.cluster, since 2026-12-01 10:00:00")
    assert "cannot see whether it still runs: check there" in said and str(tmp_path / LOCK_FILE) in said
