"""train.py's metrics logger: the log lines, metrics.jsonl (through run_folder.py), throughput and MFU, the
divergence watch and the curves.

One fixed-format line per interval on the main process, the same record in metrics.jsonl and to the trackers
(accelerate's, e.g. Weights & Biases). The logger keeps the running loss sums itself: since the last log line (the
window, saved in every checkpoint so that a resumed run logs the same numbers) and since the last checkpoint (the
loss a checkpoint is saved at). A non-finite loss raises NonFiniteLoss; a loss that stays far above its start is
warned about (LossWatch).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import run_folder
from model import flops_per_token
from utils import elapsed_and_eta, matmul_flops_per_second, readable


class NonFiniteLoss(Exception):
    """The training loss (or the weights) stopped being finite at `step`: the run stops without saving."""

    def __init__(self, loss: float, step: int):
        super().__init__(f"the training loss became {loss} by step {step}")
        self.loss, self.step = loss, step


class MetricsLogger:
    """Every process calls the logger (reducing a loss needs them all); the main process alone writes and prints.

    `add(loss)` after every update; `log_when_due` writes a training line every --logging_steps (and at the last
    update); `log_eval` an evaluation line."""

    def __init__(self, accelerator, run: Path, args, context_length: int, config):
        self.accelerator, self.run, self.main = accelerator, run, accelerator.is_main_process
        self.logging_steps, self.total_steps = args.logging_steps, args.num_training_steps
        self.continued = bool(args.init_from)  # the step-0 evaluation is the loaded model's: the baseline to beat
        self.tokens_per_update = (args.per_gpu_batch_size * accelerator.num_processes *
                                  args.gradient_accumulation_steps * context_length)
        self.flops_per_token = flops_per_token(config, context_length, args.masking_probability)
        self.peak_flops = None  # one GPU's measured matrix rate: the denominator of MFU
        if accelerator.device.type == "cuda":
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
            self.peak_flops = matmul_flops_per_second(accelerator.device, dtype)
        self.window = torch.zeros((), device=accelerator.device)  # loss summed since the last log line
        self.since_checkpoint = torch.zeros((), device=accelerator.device)  # and since the last checkpoint
        self.loss_watch = LossWatch()
        self.last_finite_step = 0  # the latest update whose logged loss was finite

    def start(self, state) -> None:
        """From where `state` (a TrainState, fresh or resumed) stands: the saved window, the original start of the
        loss watch, the clocks."""
        self.window.fill_(state.window_loss_of(self.accelerator.process_index, self.accelerator.num_processes))
        self.since_checkpoint.zero_()
        self.loss_watch.start_from(run_folder.read_metrics(self.run) if self.main else [])
        self.last_finite_step = self.start_step = state.step
        self.started = self.timer_start = time.perf_counter()
        self.updates_timed = 0

    def add(self, loss: torch.Tensor) -> None:
        """The mean loss of one update (a tensor on the device: no wait for it here)."""
        self.window += loss
        self.since_checkpoint += loss
        self.updates_timed += 1

    def log_when_due(self, state, grad_norm, lr: float, last: bool) -> None:
        if state.step % self.logging_steps == 0 or last:
            self.log_training(state, grad_norm, lr)
            self.window.zero_()

    def log_training(self, state, grad_norm, lr: float) -> None:
        steps = state.step - (state.step - 1) // self.logging_steps * self.logging_steps
        loss = self.accelerator.reduce(self.window, reduction="mean").item() / steps
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss, state.step)
        self.last_finite_step = state.step
        rate = self.updates_timed * self.tokens_per_update / max(time.perf_counter() - self.timer_start, 1e-9)
        record = {"step": state.step, "loss": loss, "lr": lr, "grad_norm": None if grad_norm is None else
                  float(grad_norm), "tokens_per_second": round(rate, 1), "epoch": state.epoch}
        done, left = state.step - self.start_step, self.total_steps - state.step
        line = (f"step {state.step:>7}/{self.total_steps} | loss {readable(loss, 4)} | lr {lr:.3e} | "
                f"grad_norm {readable(record['grad_norm'] or 0, 3)} | {rate:,.0f} tok/s | "
                f"{elapsed_and_eta(time.perf_counter() - self.started, done, left)}")
        if self.peak_flops:
            record["mfu"] = rate * self.flops_per_token / (self.peak_flops * self.accelerator.num_processes)
            line += f" | mfu {100 * record['mfu']:.1f}%"
        if warning := self.loss_watch.update(state.step, loss, steps):
            record["warning"], line = warning, f"{line}\nwarning: {warning}"
        self.write(record, line)

    def log_eval(self, step: int, metrics: dict) -> None:
        if step == 0:  # the untrained model's loss: where a diverging training loss is measured from
            self.loss_watch.start_from([{"step": 0, **metrics}])
        baseline = " | --init_from's own loss: the baseline to beat" if step == 0 and self.continued else ""
        self.write({"step": step, **metrics}, f"eval {step:>7}/{self.total_steps} | eval_loss "
                   f"{readable(metrics['eval_loss'], 4)} | eval_accuracy {100 * metrics['eval_accuracy']:.2f}% | "
                   f"eval_perplexity {readable(metrics['eval_perplexity'], 2)}{baseline}")
        if self.main:
            plot_training_curves(run_folder.read_metrics(self.run), run_folder.curves_file(self.run))

    def write(self, record: dict, line: str) -> None:
        """One metrics.jsonl line and one console line (main process), the trackers; the throughput clock restarts
        so that it counts training only."""
        if self.main:
            run_folder.append_metrics(self.run, record)
            print(line, flush=True)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        self.restart_clock()

    def restart_clock(self) -> None:
        self.timer_start, self.updates_timed = time.perf_counter(), 0

    def checkpoint_losses(self, step: int, last_checkpoint_step: int) -> tuple[float, list[float]]:
        """(the mean loss since the last checkpoint, over processes; every process's window sum), for a checkpoint
        at `step`; the since-checkpoint sum starts again."""
        loss = self.accelerator.reduce(self.since_checkpoint, reduction="mean").item() / max(
            step - last_checkpoint_step, 1)
        self.since_checkpoint.zero_()
        return loss, self.accelerator.gather(self.window.reshape(1)).tolist()


@dataclass
class LossWatch:
    """Warns when the training loss has stayed far above where it started for many updates: a run that diverges
    without ever reaching NaN (a learning rate far too high) would otherwise run to its end and exit 0.

    The starting value is the untrained model's evaluation loss (step 0; ln(vocabulary) or so), else the first
    logged training loss. "Far above" is more than FACTOR times it, which a healthy run never reaches (its loss
    only falls from there, and spikes rarely double it); "many updates" is at least PATIENCE updates over at least
    two log lines, so that one spike is not reported. A warning, not a stop: like loss spikes in large runs, a
    divergence sometimes recovers, and the user judges; it is repeated if the loss recovers and diverges again."""

    FACTOR = 2.0
    PATIENCE = 20
    start: float | None = None
    above_since: int | None = None  # the first update of the run of log lines above the threshold
    lines_above: int = 0
    warned: bool = False

    def start_from(self, records: list[dict]) -> None:
        """The starting value from a run's metrics records (on resume: the original start)."""
        first = [r["eval_loss"] for r in records if r.get("step") == 0 and "eval_loss" in r] + \
            [r["loss"] for r in records if "loss" in r]
        self.start = first[0] if first else None

    def update(self, step: int, loss: float, updates: int) -> str | None:
        """Take the loss logged at `step` (the mean over its last `updates` updates); return a warning, or None."""
        if self.start is None:
            self.start = loss
            return None
        if loss <= self.FACTOR * self.start:
            self.above_since, self.lines_above, self.warned = None, 0, False
            return None
        if self.above_since is None:
            self.above_since = step - updates + 1
        self.lines_above += 1
        if self.warned or self.lines_above < 2 or step - self.above_since + 1 < self.PATIENCE:
            return None
        self.warned = True
        return (f"the training loss is diverging: {readable(loss, 4)} at step {step}, above {self.FACTOR:g} x its "
                f"starting value {readable(self.start, 4)} at every log line since step {self.above_since}. The "
                f"learning rate is likely too high: stop the run (Ctrl-C saves a checkpoint), then resume from a "
                f"checkpoint saved before step {self.above_since} or start again (--overwrite), with a lower "
                "--learning_rate or more --num_warmup_steps")


def plot_training_curves(records: list[dict], path: str | os.PathLike) -> None:
    """Loss and eval-accuracy curves of a run's metrics records, written atomically to a PNG. Without
    matplotlib (a bare GPU image may lack it) the picture is skipped with one line, once: the numbers are all in
    the metrics file, and a run must not die at its first evaluation for a plot."""
    if importlib.util.find_spec("matplotlib") is None:
        if not getattr(plot_training_curves, "warned", False):
            print(f"note: matplotlib is not installed: {Path(path).name} is not drawn ({run_folder.METRICS_FILE} "
                  "has every number)", flush=True)
            plot_training_curves.warned = True
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"], r["eval_accuracy"]) for r in records if "eval_loss" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss", alpha=0.7)
    if evals:
        steps, losses, accuracies = zip(*evals, strict=True)
        ax_loss.plot(steps, losses, "o-", label="eval loss")
        ax_acc.plot(steps, [100 * a for a in accuracies], "o-", color="tab:green")
    ax_loss.set(xlabel="update", ylabel="masked-LM loss (nats)", title="loss")
    ax_loss.legend()
    ax_acc.set(xlabel="update", ylabel="masked-token accuracy (%)", title="eval accuracy")
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
