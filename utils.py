"""Helpers every script shares. The store is in store.py, the corpora in corpora.py, the tokenizer in tokenization.py,
masking in batches.py, SQuAD in qa.py.

Sections:
  * command line: the exit codes, `UsageError`, `ScriptExit` and `run_cli` (an expected failure ends in one line),
    `first_line` (an exception as a short reason), `looks_local` (a path, not a Hub id), the `ArgumentParser` and
    `HelpFormatter` of the scripts' --help (paths with `~` expanded by `user_path`), `log` (main process only),
    `duration` and `elapsed_and_eta` for log lines, `library_versions`;
  * Weights & Biases: `wandb_offline_unless_logged_in`;
  * training runs: `readable` (numbers of any size in a log line), `command_with` (a command line with flags
    changed, for advice that runs as printed), and the GPU's matrix rate `matmul_flops_per_second` (the curves and
    the divergence watch are metrics.py's).
"""

from __future__ import annotations

import argparse
import errno
import importlib.metadata
import importlib.util
import netrc
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

# ----------------------------------------------------------------------------------------------------------------
# Command line: errors, --help, logging
# ----------------------------------------------------------------------------------------------------------------


# Exit codes, the same for every script: 0 done; EXIT_FAILED when a run stops on a problem that is not a bug (a
# non-finite loss, unreadable checkpoints, a full disk); EXIT_USAGE for bad usage or input (nothing written);
# 128 + N when signal N stopped it (130 Ctrl-C, 143 SIGTERM), as a shell reports it. A traceback (exit 1) is a bug.
EXIT_FAILED = 1
EXIT_USAGE = 2
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def exit_code_for_signal(signum: int) -> int:
    return 128 + int(signum)


class UsageError(Exception):
    """A problem with what the user asked for. Printed as one line `error: ...`, without a traceback; EXIT_USAGE."""


class ScriptExit(Exception):
    """An expected end of a script other than bad usage: `message` (one line) on stderr, then exit `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


class Stopped(BaseException):
    """SIGTERM or SIGHUP (a scheduler, a closed terminal) raised in the main thread, as Ctrl-C raises
    KeyboardInterrupt, and like it no Exception: no library's `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def raise_on_stop_signals() -> None:
    """From here on SIGTERM and SIGHUP raise Stopped (SIGHUP is left alone where it is ignored, as under nohup), so
    that a stop ends in the script's own line, not in silence."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _raise_stopped)


def stop_signal_name(stop: BaseException) -> tuple[str, int]:
    """(its name for a message, its signal number) of a Stopped or a KeyboardInterrupt (Ctrl-C)."""
    signum = getattr(stop, "signum", signal.SIGINT)
    return ("Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name), int(signum)


class DiskFull(ScriptExit):
    """The disk filled up while a script wrote: `what` says what was not written and what was left as it was.
    One line and EXIT_FAILED, from every script (run_cli turns an unexpected full disk into one as well)."""

    def __init__(self, what: str):
        super().__init__(f"error: the disk is full: {what}", EXIT_FAILED)


# What torch.save's zip writer raises when a write comes up short (it never sees the errno): a full disk or quota
TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed writing")


def out_of_space(error: BaseException) -> bool:
    """Whether an error is a full disk (or quota): ENOSPC/EDQUOT as an OSError, or in the text of a library's own
    error, which safetensors 0.8 raises as SafetensorError ("No space left on device (os error 28)") and torch.save
    (the Trainer's optimizer and RNG files) as a RuntimeError of its zip writer."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL_ERRNOS
    return any(f"os error {code})" in str(error) for code in DISK_FULL_ERRNOS) or \
        isinstance(error, RuntimeError) and any(text in str(error) for text in TORCH_SHORT_WRITE)


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's `main` under the exit policy above: UsageError is `error: <message>` and EXIT_USAGE,
    ScriptExit its message and its code, a full disk the script did not report itself one line and EXIT_FAILED, a
    Ctrl-C the script does not handle itself (while it starts up) one line and 130; anything else is a bug and
    keeps its traceback."""
    try:
        main()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except ScriptExit as end:
        print(end, file=sys.stderr, flush=True)
        sys.exit(end.code)
    except KeyboardInterrupt:
        print("error: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(exit_code_for_signal(2))  # SIGINT
    except Exception as error:
        if not out_of_space(error):
            raise
        print(DiskFull(f"{type(error).__name__}: {first_line(error)}; free space and run again"), file=sys.stderr,
              flush=True)
        sys.exit(EXIT_FAILED)


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception as a short reason inside a message: the first line of its text, at most `limit` characters,
    or its type's name when it has no text."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def looks_local(name: str | os.PathLike) -> bool:
    """Whether a name means a local path rather than a Hub id (`name` or `owner/name`): it exists, starts with ".",
    "/" or "~", or has more than one "/"."""
    text = str(name)
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") > 1


def is_main_process() -> bool:
    """True on the process that writes files and prints (rank 0 under torchrun / accelerate launch; RANK is set by
    both, and is also right before an Accelerator exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def log(message: str, prefix: str = "") -> None:
    """One line of progress, printed by the main process only, flushed at once (logs are read while runs go)."""
    if is_main_process():
        print(f"{prefix}{message}", flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a one-line UsageError (exit code 2) rather than usage text plus an error, and
    every value goes through `user_path`, the one path normaliser of all the scripts."""

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for name, value in vars(namespace).items():
            if isinstance(value, str | Path):
                setattr(namespace, name, user_path(value))
            elif isinstance(value, list):
                setattr(namespace, name, [user_path(v) if isinstance(v, str) else v for v in value])
        return namespace, extras


def user_path(value: str | Path) -> str | Path:
    """`~` and `~/...` expanded to the home folder, as a shell would have (it does not in `--flag=~/x`, nor in
    quotes); any other value unchanged."""
    text = str(value)
    if text == "~" or text.startswith("~/"):
        return type(value)(os.path.expanduser(text))
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as the three scripts show it: the description as written (paragraphs, examples), and every flag's
    default (or "required")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return f"{text} (required)"
        if "(default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_running_flags(parser: argparse.ArgumentParser, unit: str):
    """ask.py's and classify.py's "running" group: --batch_size (of `unit`), --device, --path_to_cache_dir."""
    run = parser.add_argument_group("running")
    run.add_argument("--batch_size", type=int, default=32, help=f"{unit} per forward pass")
    run.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, mps...")
    run.add_argument("--path_to_cache_dir", default=None,
                     help="where a Hub --model is downloaded; unset: the Hugging Face cache")
    return run


def pick_device(name: str):
    """The torch device of a --device flag: auto (a GPU if there is one), cpu, cuda, cuda:1, mps...; a UsageError
    for a name torch does not know or a GPU that is not there."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name} is not a device: auto, cpu, cuda, cuda:1, mps...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return device


def duration(seconds: float) -> str:
    """A duration for a log line: 42s, 6m05s, 2h07m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def elapsed_and_eta(elapsed: float, done: int, remaining: int) -> str:
    """`1m05s, ETA 9m06s`: the time the `done` steps took, and the `remaining` steps at that pace."""
    return f"{duration(elapsed)}, ETA {duration(elapsed / max(done, 1) * remaining)}"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on, for the record written beside its outputs."""
    versions = {"python": sys.version.split()[0]}
    for name in ["torch", "transformers", "datasets", "accelerate", "tokenizers"]:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def missing_requirements(path: str | Path) -> list[str]:
    """The lines of a requirements file (and of the files it includes with -r) that the installed packages do not
    satisfy: what `make install` reports before it runs pip, and why it stays quiet when nothing is missing."""
    try:
        from packaging.requirements import Requirement  # here: `make install` runs this before anything is installed
    except ImportError:
        return ["packaging (to read the requirements)"]
    missing = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            missing += missing_requirements(Path(path).parent / line[2:].strip())
        elif line:
            requirement = Requirement(line)
            try:
                version = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                version = None
            if version is None or not requirement.specifier.contains(version, prereleases=True):
                missing.append(f"{line} (installed: {version or 'none'})")
    return missing


# ----------------------------------------------------------------------------------------------------------------
# Weights & Biases
# ----------------------------------------------------------------------------------------------------------------


def wandb_logged_in() -> bool:
    """Whether wandb will find credentials: WANDB_API_KEY, an identity token file, or the .netrc entry that `wandb
    login` writes (for WANDB_BASE_URL's host, else a W&B host). Read without importing wandb: wandb caches its
    settings at first use, so asking wandb itself would fix its mode before WANDB_MODE=offline could be set."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        hosts = netrc.netrc(str(path)).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    if os.environ.get("WANDB_BASE_URL"):
        return urlsplit(os.environ["WANDB_BASE_URL"]).netloc in hosts
    return any("wandb" in host or "coreweave" in host for host in hosts)


def wandb_offline_unless_logged_in() -> str | None:
    """Weights & Biases without a login logs offline instead of stopping the run at a login prompt or at its first
    upload; a WANDB_MODE the user set is left alone. Returns the note to print when it switched to offline; raises
    UsageError when wandb is not installed."""
    if importlib.util.find_spec("wandb") is None:
        raise UsageError("logging to Weights & Biases needs the wandb package: pip install wandb")
    if os.environ.get("WANDB_MODE") or wandb_logged_in():
        return None
    os.environ["WANDB_MODE"] = "offline"
    return ("note: no Weights & Biases login (WANDB_API_KEY or `wandb login`), so wandb logs offline into the run "
            "folder's wandb/ (upload it later with `wandb sync`; WANDB_MODE=online insists on online)")


# ----------------------------------------------------------------------------------------------------------------
# Training runs (train.py, benchmarks)
# ----------------------------------------------------------------------------------------------------------------


def readable(x: float, digits: int = 2) -> str:
    """A number for a log line: fixed-point while it is of sane size, scientific beyond (a perplexity of e^700
    prints as 1.014e+304, not as 305 digits; one past a float's range as e^loss: metrics.perplexity_text)."""
    return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.3e}"


def command_with(parser: argparse.ArgumentParser, argv: list[str], changes: dict[str, str | None]) -> str:
    """The command `argv` ran, with the flags of `changes` set to their value ("" for a flag alone, None to leave
    the flag out): advice that can be run as printed."""
    takes_value = {option: action.nargs != 0 for action in parser._actions for option in action.option_strings}
    kept, i = [], 0
    while i < len(argv):
        name = argv[i].split("=")[0]
        width = 1 if "=" in argv[i] or not takes_value.get(name, False) else 2
        if name.replace("--no-", "--") not in changes:
            kept += argv[i:i + width]
        i += width
    for flag, value in changes.items():
        kept += [] if value is None else [flag, value] if value else [flag]
    return shlex.join(["python", parser.prog, *kept])


def matmul_flops_per_second(device, dtype, size: int = 8192, repeats: int = 10) -> float:
    """The measured rate of `size` x `size` matrix multiplies in `dtype` on `device`: the denominator of MFU (for
    train.py and the benchmarks alike). Three untimed products first; random operands from a private generator,
    so that no other random stream moves."""
    import torch  # here, not above: every script imports utils.py, and prepare_data.py needs no torch

    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=generator) for _ in range(2))

    def wait() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        a @ b
    wait()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    wait()
    return repeats * 2 * size**3 / (time.perf_counter() - start)
