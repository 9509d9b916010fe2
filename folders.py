"""The rules that keep a user's folders safe, for every folder a script writes. Used by all three scripts.

Each script writes one kind of output folder, declared (`OutputKind`) by the module that owns its format:
store.STORE (prepare_data.py's data store), run_folder.PRETRAINING_RUN (train.py's run folder),
qa_run_folder.QA_RUN (finetune_roberta_qa.py's run folder). Four promises hold for every one of them:

* `--overwrite` replaces only a folder the script can recognise as its own output, by the record it wrote
  there (`OutputKind.records`), and then removes only the entries the script itself makes: anything else in the
  folder (a log the user redirected there, notes) stays.
  Without --overwrite, a folder holding only files the script never makes is written beside them.
  It never replaces the current directory, a parent of it, the home folder, a git repository, a folder that
  is or holds an input of the same run, or a folder another run is using.
* One run per folder: `FolderLock` holds a lock file (`.lock`) for the life of the run. A second run into the
  same folder is refused before it touches anything, and the lock file is made only once every other check
  has passed. The lock is a POSIX record lock (`lockf`), which belongs to one process: the kernel releases it
  when that process dies, even while the DataLoader workers it forked are still exiting, so a killed run can be
  resumed at once; NFS supports it. Where a filesystem supports no locking at all, a lock file holding the
  owner's host and pid is used instead, and a lock of a dead process on this host is taken over.
  `describe_holder` is the one way to say which run holds a folder.
* A folder replaced as a whole (prepare_data.py's store) is written in a hidden work folder beside it
  (`.<name>.tmp-<pid>-<hex>`) and swapped in by two renames with signals held back (`move_into_place`); a run
  killed mid-way leaves only such folders, which `clean_stale_work_folders` removes (or puts back) next time.
* Files are written atomically (`write_json`), and `file_manifest`/`verify_manifest` record and check each
  file's size and checksum, so that a damaged checkpoint is detected before it is loaded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from utils import UsageError, out_of_space

LOCK_FILE = ".lock"


@dataclass(frozen=True)
class OutputKind:
    """What one script writes: how its folders are recognised (`records`) and what it makes in them (`made`)."""

    description: str  # "data store", for messages
    script: str  # "prepare_data.py"
    records: tuple[str, ...]  # any one of these files marks a folder as this script's output
    made: tuple[str, ...]  # every entry the script may create in its folder (removed by --overwrite)
    inner: re.Pattern | None = None  # what the script makes inside a folder of `made` (its checkpoints)
    continue_hint: str = ""  # how to continue an existing output instead of replacing it, for messages


# ----------------------------------------------------------------------------------------------------------------
# Which folders may be written and replaced
# ----------------------------------------------------------------------------------------------------------------


def check_output_folder(folder: str | os.PathLike, kind: OutputKind, *, flag: str, overwrite: bool,
                        inputs: dict[str, str | os.PathLike | None] | None = None, resuming: bool = False) -> Path:
    """Check that `folder` may receive this run's output; raise UsageError (one line) if not. Changes nothing.

    `flag` names the folder in messages (e.g. "--path_to_data_store runs/x"); `inputs` maps each input's flag to
    its path, so that an output folder that is, or holds, an input is refused; `resuming` allows a folder that
    already holds this kind of output without `--overwrite` (train.py's `--resume_from_checkpoint`).
    """
    path = Path(folder).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} is a file, not a folder")
    refuse_precious(path, flag)
    check_writable(path, flag)
    for input_flag, input_path in (inputs or {}).items():
        if input_path and Path(input_path).expanduser().exists():
            source = Path(input_path).expanduser().resolve()
            if source == path.resolve() or source.is_relative_to(path.resolve()):
                raise UsageError(f"{flag} is or holds {input_flag} {input_path}, an input of this run: writing "
                                 "there could destroy it; choose another output folder")
    if not path.is_dir() or not own_entries(path, kind) and not foreign_entries(path, kind):
        return path  # new or empty (a lock file alone does not count)
    if not is_output_of(path, kind):
        if not own_entries(path, kind) and not overwrite:
            return path  # only files the script never makes (a log redirected there): it writes beside them
        raise UsageError(f"{flag} holds files that {kind.script} did not write (no {' or '.join(kind.records)}): "
                         f"it is not a {kind.description}, so even --overwrite leaves it alone; choose an empty "
                         "or new folder")
    if not overwrite and not resuming:
        hint = f"{kind.continue_hint} to continue it, " if kind.continue_hint else ""
        raise UsageError(f"{flag} already holds a {kind.description}; pass {hint}--overwrite to replace it, or "
                         "choose another folder")
    return path


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".model")  # weights and tokenizer models


def refuse_replacing_outputs(path: str | os.PathLike, flag: str, kinds: tuple[OutputKind, ...],
                             model: str | os.PathLike | None = None, model_files: tuple[str, ...] = ()) -> None:
    """Refuse (even with --overwrite) a file to write that would replace a file of the model folder being read
    (`model_files`, or any weights), or an output a script of `kinds` made and records in its folder (a fine-tuning
    run's predictions.json, config.json, weights...). --overwrite replaces the user's own files only. Symlinks and
    `..` are followed."""
    target = Path(path).absolute().resolve()
    if model is not None and Path(model).is_dir():
        folder = Path(model).resolve()
        if target.is_relative_to(folder) and (target.name in model_files or target.suffix in MODEL_FILE_SUFFIXES):
            raise UsageError(f"{flag} {path} is a file of the model folder it reads ({folder}): writing there would "
                             "damage the model; choose another file name")
    for folder in target.parents:
        for kind in kinds:
            if is_output_of(folder, kind) and target.relative_to(folder).parts[0] in kind.made:
                raise UsageError(f"{flag} {path} would replace {kind.script}'s own output in {folder} (the "
                                 f"{kind.description}); choose another file name, e.g. "
                                 f"{folder / ('ask_' + target.name)}")


def check_output_file(path: str | os.PathLike, flag: str, *, source: str | os.PathLike, source_flag: str,
                      overwrite: bool, kinds: tuple[OutputKind, ...], model: str | os.PathLike | None = None,
                      model_files: tuple[str, ...] = (), example_name: str = "out.json",
                      is_own_output: Callable[[Path], bool] | None = None) -> None:
    """The guards of a file a script writes its answers into (ask.py's and classify.py's --output), all before the
    model is loaded: not a folder, not the input (`source`), no file of the model folder read or of any script's
    output (`refuse_replacing_outputs`), not an existing file without `overwrite`, and with it (when the script can
    tell its own output by `is_own_output`) only a file it wrote; a folder that exists and can be written.
    UsageError (one line) otherwise."""
    output = Path(path).expanduser()
    if output.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name, e.g. {output / example_name}")
    if output.exists() and output.resolve() == Path(source).expanduser().resolve():
        raise UsageError(f"{flag} {path} is the {source_flag} itself; writing there would destroy it")
    refuse_replacing_outputs(output, flag, kinds, model, model_files=model_files)
    if output.exists() and not overwrite:
        raise UsageError(f"{flag} {path} exists; pass --overwrite to replace it, or choose another name")
    if output.exists() and is_own_output is not None and not is_own_output(output):
        raise UsageError(f"{flag} {path} exists and is not an output of this script (its first line is not one of "
                         "its records): even --overwrite replaces only the script's own output; choose another name")
    if not output.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {output.parent} does not exist")
    check_writable(output, flag)  # before the first answer, not after the last


def refuse_precious(path: Path, flag: str) -> None:
    """Never write into (let alone replace) the current directory, its parents, home, / or a git repository."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"{flag} is the current directory or one of its parents; give a folder of its own "
                         "(e.g. runs/NAME)")
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        raise UsageError(f"{flag} is your home folder or the filesystem root; give a folder of its own")
    if (resolved / ".git").exists():
        raise UsageError(f"{flag} is a git repository; give a folder of its own")


def is_output_of(folder: Path, kind: OutputKind) -> bool:
    return any((folder / name).exists() for name in kind.records)


def own_entries(folder: Path, kind: OutputKind) -> list[Path]:
    """Entries of `folder` that the script makes (the lock file not counted)."""
    return sorted(p for p in folder.iterdir() if p.name in kind.made and p.name != LOCK_FILE)


def foreign_entries(folder: Path, kind: OutputKind) -> list[Path]:
    """Entries of `folder` that the script does not make: the user's, never removed."""
    return sorted(p for p in folder.iterdir() if p.name not in kind.made)


def remove_own_outputs(folder: Path, kind: OutputKind) -> list[str]:
    """--overwrite, after every check passed: delete what the script made; return the names of what was kept.

    A symlinked folder (checkpoints/ on another disk) stays a link: only the checkpoints inside it are removed."""
    for entry in own_entries(folder, kind):
        if entry.is_symlink() and entry.is_dir():
            for inner in entry.iterdir():
                if kind.inner and kind.inner.fullmatch(inner.name) and inner.is_dir() and not inner.is_symlink():
                    shutil.rmtree(inner)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return [p.name for p in foreign_entries(folder, kind)]


# ----------------------------------------------------------------------------------------------------------------
# One run per folder
# ----------------------------------------------------------------------------------------------------------------


class FolderLock:
    """An exclusive (or shared) lock on `folder`, held until `release()` or the process ends.

    `acquire()` raises UsageError naming the holder when another run has it. A shared lock lets several readers
    in (train.py reading a store) while keeping an exclusive writer (prepare_data.py --overwrite) out.

    The lock is a POSIX record lock (`fcntl.lockf`) on `.lock`: it belongs to the process that took it, so it dies
    with that process even when forked children (DataLoader workers) outlive it for a while, as a `flock` would
    not. Such a lock is also dropped when its process closes any descriptor of the file, so this process never
    opens a lock file it holds a second time (`_HELD`).
    """

    def __init__(self, folder: str | os.PathLike, *, flag: str, shared: bool = False):
        self.folder, self.flag, self.shared = Path(folder), flag, shared
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        self.pid_file = False  # True where record locks are unsupported and the lock is the file's existence

    def acquire(self) -> FolderLock:
        if not self.shared:
            check_writable(self.folder, self.flag)
            self.folder.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _HELD:
            raise UsageError(f"{self.flag} is in use by another run ({describe_holder(self.path)}); wait for it "
                             "to finish, or choose another folder")
        fd = _open_lock_file(self.path, self.shared, self.flag)
        if fd is None:  # a reader of a read-only folder without a lock file: no writer can replace it either
            return self
        try:
            fcntl.lockf(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EACCES, errno.EAGAIN):
                raise UsageError(f"{self.flag} is in use by another run ({describe_holder(self.path)}); wait for "
                                 "it to finish, or choose another folder") from None
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            return self._acquire_pid_file()  # a filesystem without record locks
        self.fd = fd
        _HELD[key] = self
        if not self.shared:
            os.ftruncate(fd, 0)
            os.write(fd, _owner().encode())
        return self

    @staticmethod
    def acquire_all(locks: list[FolderLock]) -> list[FolderLock]:
        """Acquire every lock, or none: those taken are released again when one is refused."""
        held = []
        try:
            for each in locks:
                held.append(each.acquire())
        except BaseException:
            for each in held:
                each.release()
            raise
        return held

    def _acquire_pid_file(self) -> FolderLock:
        owner = _holder_record(self.path)
        if owner and not _is_stale(owner):
            raise UsageError(f"{self.flag} is in use by another run ({describe_holder(self.path)}); wait for it to "
                             f"finish, or delete {self.path} if that run is gone")
        self.path.write_text(_owner())
        self.pid_file = True
        return self

    def release(self) -> None:
        if self.fd is not None:
            _HELD.pop(self.path.resolve(), None)
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None
        if self.pid_file:
            self.path.unlink(missing_ok=True)
            self.pid_file = False


_HELD: dict[Path, FolderLock] = {}  # the lock files this process holds


def _open_lock_file(path: Path, shared: bool, flag: str) -> int | None:
    """A descriptor of the lock file, made if missing; a reader of a read-only folder opens an existing one, or
    gets None where there is none."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        if shared and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return os.open(path, os.O_RDONLY) if path.is_file() else None
        raise UsageError(f"{flag} cannot be written ({error.strerror or error}): choose a folder you can write "
                         "to") from None


def check_in_use(folder: str | os.PathLike, flag: str) -> None:
    """Refuse a folder whose lock another run holds, without making a lock file (an early check: the lock itself is
    taken only once every other check has passed)."""
    path = Path(folder) / LOCK_FILE
    if path.is_file() and describe_holder(path, live_only=True):
        raise UsageError(f"{flag} is in use by another run ({describe_holder(path)}); wait for it to finish, or "
                         "choose another folder")


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Refuse (one line) an output path that cannot be written: its nearest existing folder is not writable."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise UsageError(f"{flag} cannot be made: {existing} is a file")
    folder = existing if existing.is_dir() else existing.parent
    if existing.is_file() and existing == path and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path} is read-only: choose a path you can write to")
    if not os.access(folder, os.W_OK | os.X_OK) or _read_only_mount(folder):
        raise UsageError(f"{flag} cannot be written: {folder} is read-only for you; choose a folder you can "
                         "write to")


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def describe_holder(lock_path: Path, live_only: bool = False) -> str:
    """Which run holds a lock, in one phrase: the process that holds the record lock now (pid and command line,
    e.g. the train.py run reading a store, not the prepare_data.py run that made it), else the owner the lock file
    records. With `live_only`, "" when no live process holds it."""
    if lock_path.resolve() in _HELD:  # reading the file would close a descriptor of it, and so drop our lock
        return f"pid {os.getpid()} on {socket.gethostname()} (this process): {_command_line(os.getpid())}"
    pid = _locking_pid(lock_path)
    if live_only:
        return f"pid {pid}" if pid else ""
    record = _holder_record(lock_path) or {}
    here = socket.gethostname()
    local = _local_lock_holders(lock_path)
    if pid and local is not None and pid not in local:  # a filesystem shared by hosts: the holder runs elsewhere
        # (its pid is the other host's, and may be that of an unrelated process here)
        writer = f" (pid {record.get('pid')} on host {record['host']}, since {record.get('since')})" \
            if record.get("host") and record["host"] != here else ""
        return f"a process on another host{writer}; this host cannot see it: check there. The lock goes when it ends"
    remote = record.get("host") and record["host"] != here
    if remote and not (pid and pid_alive(pid)):  # the holder runs elsewhere
        return (f"pid {record.get('pid')} on host {record['host']}, since {record.get('since')}; this host cannot see "
                f"whether it still runs: check there, and delete {lock_path} only if it does not")
    if pid:
        since = f", since {record['since']}" if record.get("pid") == pid and record.get("since") else ""
        return f"pid {pid} on {socket.gethostname()}{since}: {_command_line(pid)}".removesuffix(": ")
    if record:
        return f"pid {record.get('pid')} on {record.get('host')}, since {record.get('since')}"
    return "a reader holds it"


def _locking_pid(lock_path: Path) -> int | None:
    """The pid of a process holding a record lock on `lock_path` (Linux's struct flock), or None."""
    if not sys.platform.startswith("linux"):
        return None
    query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return None
    finally:
        os.close(fd)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def _local_lock_holders(lock_path: Path) -> set[int] | None:
    """The pids of processes on this host holding a record lock on the file, from /proc/locks (Linux), which lists
    no holder on another host of a shared filesystem; None where it cannot be read."""
    try:
        inode = lock_path.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    holders = set()
    for line in lines:  # "1: POSIX  ADVISORY  WRITE 1234 00:2f:5678 0 EOF"; a waiter's line has "->" after the id
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "POSIX" and fields[5].rsplit(":", 1)[-1] == str(inode):
            holders.add(int(fields[4]))
    return holders


def _command_line(pid: int) -> str:
    """`train.py --experiment_name x ...`: the script and arguments of a process on this host ("" if unknown)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    words = [" ".join(w.split()) for w in words if w.strip()]
    script = next((i for i, w in enumerate(words) if w.endswith(".py")), 0)
    text = " ".join([Path(words[script]).name, *words[script + 1:]]) if words else ""
    return text if len(text) <= 160 else text[:157] + "..."


def _holder_record(lock_path: Path) -> dict | None:
    try:
        record = json.loads(lock_path.read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _owner() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")})


def _is_stale(owner: dict) -> bool:
    """A pid-file lock of a process that no longer exists on this host (or an unreadable record of one)."""
    if owner.get("host") != socket.gethostname():
        return False  # cannot tell from here
    try:
        pid = int(owner["pid"])
    except (ValueError, KeyError, TypeError):
        return True
    return not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (another user's counts: it is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------------------------
# Replacing a folder as a whole: the work folder beside it, the swap with signals held back, what a killed run left
# ----------------------------------------------------------------------------------------------------------------


def acquire_lock(folder: Path, flag: str) -> FolderLock:
    """The exclusive lock of an output folder, made if need be; a folder that cannot be written is one UsageError."""
    try:
        return FolderLock(folder, flag=flag, shared=False).acquire()
    except OSError as error:
        raise UsageError(f"{flag} cannot be written ({error.strerror}): choose a folder you can write to") from None


@contextlib.contextmanager
def uninterruptible():
    """SIGINT/SIGTERM held back during the block (a swap: never half a folder), and discarded after it: once the
    new folder is in place the run has succeeded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        for s in signals:  # a pending signal whose action becomes SIG_IGN is discarded
            signal.signal(s, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def work_folder_name(folder: Path, kind: str) -> str:
    return f".{folder.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def make_work_folder(folder: Path, flag: str) -> Path:
    """A fresh hidden folder beside `folder` (same file system, so the final move is a rename)."""
    work = folder.parent / work_folder_name(folder, "tmp")
    try:
        work.mkdir()
    except OSError as error:
        raise UsageError(f"cannot write beside {flag}: {error.strerror}") from None
    return work


def clean_stale_work_folders(folder: Path, kind: OutputKind) -> list[str]:
    """Remove what runs killed mid-way left beside `folder` (their pid is not alive on this host).

    Called with the folder's lock held, so no live run is writing there. A `.tmp-` folder is a work folder: only the
    script's files. An `.old-` folder is a previous output caught mid-swap: if the folder holds no output of its
    own, it is put back; files of yours in it are moved back into the folder; the rest is removed. Returns what was
    done."""
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.(tmp|old)-(\d+)-[0-9a-f]+$")
    done = []
    for entry in sorted(folder.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or not entry.is_dir() or pid_alive(int(match[2])):
            continue
        if match[1] == "old":
            done.extend(restore_old_output(entry, folder, kind))
        if entry.exists():
            shutil.rmtree(entry)
            done.append(f"removed {entry.name}, left by a killed run (pid {match[2]})")
    return done


def restore_old_output(old: Path, folder: Path, kind: OutputKind) -> list[str]:
    """Bring back from a half-swapped `old` folder the previous output (if `folder` has none) and the user's files."""
    done = []
    is_empty = not own_entries(folder, kind) and not foreign_entries(folder, kind)
    movable = [p for p in old.iterdir() if p.name != LOCK_FILE] if is_empty else foreign_entries(old, kind)
    for entry in movable:
        if (folder / entry.name).exists():
            raise UsageError(f"{old} (left by a killed run) holds {entry.name}, and so does {folder}: move what you "
                             "want to keep out of it, delete it, and run again")
        entry.rename(folder / entry.name)
    if movable:
        done.append(f"moved back {', '.join(sorted(p.name for p in movable))} from {old.name} (a run was killed "
                    f"while replacing the {kind.description})")
    return done


def move_into_place(new: Path, folder: Path, kind: OutputKind) -> list[str]:
    """Replace `folder` by `new`, carrying over the files in `folder` the script did not make (returned).

    Two renames, signals held back: the old folder moves aside, the new one into place; then the user's files move
    in, and the old folder is removed only after the new one is in place."""
    old = folder.parent / work_folder_name(folder, "old")
    with uninterruptible():
        folder.rename(old)
        new.rename(folder)
        carried = []
        for entry in foreign_entries(old, kind):
            entry.rename(folder / entry.name)
            carried.append(entry.name)
    shutil.rmtree(old)
    return carried


# ----------------------------------------------------------------------------------------------------------------
# Files that can be trusted
# ----------------------------------------------------------------------------------------------------------------


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write `obj` as indented JSON atomically: a reader (or a crash) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def file_checksum(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {"bytes", "blake2b"}} of every file under `folder`."""
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "blake2b": file_checksum(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def verify_manifest(folder: Path, manifest: dict[str, dict]) -> str | None:
    """None when every file of `manifest` is in `folder` with its size and checksum; else what is wrong."""
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size:,} bytes, {expected['bytes']:,} when saved (truncated or replaced)"
        if file_checksum(path) != expected["blake2b"]:
            return f"{name} does not match its checksum (corrupted)"
    return None


def is_disk_full(error: BaseException, folder: Path, needed_bytes: int = 0) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or a library's own error while the disk is (nearly) full.

    torch.save and safetensors report a full disk as RuntimeError/SafetensorError with a C++ or Rust message, not
    an OSError: "No space left on device (os error 28)" from safetensors 0.8."""
    if out_of_space(error):
        return True
    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        return False
    return free < max(needed_bytes, 1 << 20)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ----------------------------------------------------------------------------------------------------------------
# Report files (the benchmarks' --json and --markdown): replaced only when they are the script's own
# ----------------------------------------------------------------------------------------------------------------


def report_signature(script: str) -> str:
    """The words a script's report carries in its first line (markdown: an HTML comment) or as the JSON key
    `written_by`, by which `--overwrite` recognises it."""
    return f"written by {script}"


def is_own_report(path: Path, script: str) -> bool:
    """Whether the file at `path` is a report that `script` wrote (its signature), not a user's file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    if head.lstrip().startswith("{"):
        try:
            return json.loads(Path(path).read_text()).get("written_by") == script
        except (OSError, ValueError, AttributeError):
            return False
    return report_signature(script) in head.splitlines()[0] if head else False


def check_report_file(path: str | os.PathLike, flag: str, *, script: str, overwrite: bool,
                      kinds: tuple[OutputKind, ...] = ()) -> Path:
    """Check that a report may be written at `path`; raise UsageError (one line) if not. Changes nothing.

    A new file in a writable folder is fine; an existing one is replaced only with --overwrite, and only when it is
    this script's own report (`is_own_report`): a user's file of the same name stays, --overwrite or not. Nor does
    it replace what a script of `kinds` made in its folder (`refuse_replacing_outputs`)."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a file name")
    check_writable(target, flag)
    refuse_replacing_outputs(target, flag, kinds)
    if target.exists() or target.is_symlink():
        if not is_own_report(target, script):
            raise UsageError(f"{flag} {path} exists and is not a report of {script}: even --overwrite leaves it "
                             "alone; choose another file name")
        if not overwrite:
            raise UsageError(f"{flag} {path} holds an earlier report of {script}; pass --overwrite to replace it, "
                             "or choose another file name")
    return target
