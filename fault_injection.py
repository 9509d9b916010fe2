"""Faults that the subprocess tests (and benchmarks/gpu_check.py) inject into a real run through the environment.

Each variable is read once, when this module is imported (before the run starts; forked workers inherit the
values), so that no loop of the product reads the environment. Unset, as in normal use, every fault is off.

    TRAIN_TEST_SIGNAL_AT_STEP="N:KILL|TERM|INT"  train.py: the process signals itself after update N
    TRAIN_TEST_DISK_FULL_AT_STEP=N|final         train.py: the checkpoint of update N (or final_model/) fails as a
                                                 full disk makes it fail:
    TRAIN_TEST_DISK_FULL_ERROR=OSError|SafetensorError  with ENOSPC (torch, accelerate), or as safetensors 0.8 does
    PREPARE_DATA_TEST_SECONDS_PER_BATCH=S        prepare_data.py: each tokenising task takes S seconds longer

In-process tests patch functions with `monkeypatch` instead.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

from safetensors import SafetensorError

SIGNAL_AT_STEP_ENV = "TRAIN_TEST_SIGNAL_AT_STEP"
DISK_FULL_AT_STEP_ENV = "TRAIN_TEST_DISK_FULL_AT_STEP"
DISK_FULL_ERROR_ENV = "TRAIN_TEST_DISK_FULL_ERROR"
FINAL_MODEL = "final"  # TRAIN_TEST_DISK_FULL_AT_STEP's value for final_model/
SLOW_TOKENIZING_ENV = "PREPARE_DATA_TEST_SECONDS_PER_BATCH"


def _signal_at_step(spec: str | None) -> tuple[int, signal.Signals] | None:
    if not spec:
        return None
    step, name = spec.split(":")
    return int(step), signal.Signals["SIG" + name]


SIGNAL_AT_STEP = _signal_at_step(os.environ.get(SIGNAL_AT_STEP_ENV))
DISK_FULL_AT = os.environ.get(DISK_FULL_AT_STEP_ENV) or None  # a step number, or FINAL_MODEL
DISK_FULL_ERROR = os.environ.get(DISK_FULL_ERROR_ENV) or "OSError"
TOKENIZING_DELAY_S = float(os.environ.get(SLOW_TOKENIZING_ENV) or 0)


def with_signal_at_step(requested: Callable[[int], bool]) -> Callable[[int], bool]:
    """`requested(step)` as it is, or, with TRAIN_TEST_SIGNAL_AT_STEP set, one that first signals this process
    after update N (so that the stop request is seen exactly where a real signal would be)."""
    if SIGNAL_AT_STEP is None:
        return requested
    at_step, signum = SIGNAL_AT_STEP

    def signal_then_ask(step: int) -> bool:
        if step == at_step:
            os.kill(os.getpid(), signum)
        return requested(step)

    return signal_then_ask


def check_disk_full(where: int | str) -> None:
    """With TRAIN_TEST_DISK_FULL_AT_STEP=N, the checkpoint of update N (`where`: the step, or FINAL_MODEL for
    final_model/) fails as a full disk makes it fail: an OSError, or safetensors' own error, whose text is the one
    safetensors 0.8 gives on a full tmpfs."""
    if DISK_FULL_AT is None or str(where) != DISK_FULL_AT:
        return
    if DISK_FULL_ERROR == "SafetensorError":
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    raise OSError(errno.ENOSPC, f"No space left on device ({DISK_FULL_AT_STEP_ENV})")
