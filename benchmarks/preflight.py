"""The GPU check's preflight, in one interpreter: what this machine has, and whether what the legs need works.

    python benchmarks/preflight.py --json preflight.json                    # on a GPU: the benchmark's shape
    python benchmarks/preflight.py --json p.json --device cpu --batch 3 --seq 13 --heads 2 --head_dim 24 --dtype fp32

Writes one JSON record (and prints it):
  versions      Python, torch, CUDA, cuDNN, the GPU, its driver, and every package the repository uses;
  packages      each of requirements.txt's packages (pyarrow included) that is missing, or whose version is
                outside the range requirements.txt gives (too old, or too new): {name: "missing" | "X, needs SPEC"};
  imports       {module: error} for the modules asked for (--imports) that fail to import;
  toolchain     a C compiler and the Python headers (triton builds a small C stub with both at its first kernel),
                and, on a GPU, one triton kernel compiled and run;
  attention     one scaled_dot_product_attention forward and backward at the benchmark's shape, with dropout as in
                training and the query/key/value layout model.py makes: which kernel ran (the aten operator and the
                device kernels, from a profiler trace), torch's SDPA priority order
                (`torch._C._get_sdp_priority_order()`), the cuDNN version, and the seconds it took.
Every probe reports its own failure in the record; the script itself exits 0 once the record is written.
Reads nothing from the network; needs torch (and `packaging` for the version ranges, which transformers brings).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRIPT = "benchmarks/preflight.py"  # the signature in its record (folders.is_own_report)
REQUIREMENTS = ROOT / "requirements.txt"  # the one list of packages and the versions they must have
# Distribution names whose versions the record lists, beside requirements.txt's.
EXTRA_VERSIONS = ("triton", "deepspeed", "packaging")
TRITON_PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def add_one(x, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x + i, tl.load(x + i, mask=i < n) + 1, mask=i < n)
x = torch.zeros(1000, device="cuda")
add_one[(8,)](x, 1000, BLOCK=128)
assert int(x.sum()) == 1000, "wrong result"
"""


def requirement_specs(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{distribution name: version specifier} from requirements.txt ("torch": ">=2.11,<3")."""
    specs = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if match := re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line):
            specs[match[1]] = match[2].replace(" ", "")
    return specs


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_problems(specs: dict[str, str]) -> dict[str, str]:
    """{name: "missing" | "X, needs SPEC"} for each requirement not met."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        return {"packaging": "missing: version ranges not checked"}
    problems = {}
    for name, spec in specs.items():
        version = installed_version(name)
        if version is None:
            problems[name] = "missing"
        elif spec and not SpecifierSet(spec).contains(Version(version), prereleases=True):
            problems[name] = f"{version}, needs {spec}"
    return problems


def import_failures(modules: list[str]) -> dict[str, str]:
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure to import is the finding
            failed[name] = (str(error).splitlines() or [type(error).__name__])[0][:200]
    return failed


def versions(specs: dict[str, str], on_gpu: bool) -> dict[str, str | None]:
    import torch

    found = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
             "cuda": torch.version.cuda, "cudnn": str(torch.backends.cudnn.version()) if on_gpu else None}
    for name in [*specs, *EXTRA_VERSIONS]:
        found.setdefault(name, installed_version(name))
    if on_gpu:
        found["gpu"] = torch.cuda.get_device_name()
        found["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        found["driver"] = nvidia_driver()
    return found


def nvidia_driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        return subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], text=True,
                              capture_output=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def toolchain(on_gpu: bool) -> dict:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    found = {"c_compiler": compiler, "python_headers": (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()}
    if on_gpu:
        start = time.perf_counter()
        try:
            exec(compile(TRITON_PROBE, "<triton probe>", "exec"), {})
            found["triton_kernel"] = f"ok ({time.perf_counter() - start:.1f} s)"
        except Exception as error:  # noqa: BLE001
            found["triton_kernel"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return found


def backend_names() -> dict[int, str]:
    import torch

    return {int(value): name for name, value in torch._C._SDPBackend.__members__.items()}


def attention_probe(device: str, batch: int, heads: int, seq: int, head_dim: int, dtype: str,
                    dropout: float) -> dict:
    """One SDPA forward and backward as model.py calls it, under the profiler: which kernel ran."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    names = backend_names()
    found = {"shape": f"batch {batch}, heads {heads}, sequence {seq}, head size {head_dim}, {dtype}, dropout "
                      f"{dropout}",
             "priority_order": [names.get(i, str(i)) for i in torch._C._get_sdp_priority_order()]}
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    # model.py's layout: one (B, T, 3, nh, hs) projection permuted into q, k, v of (B, nh, T, hs), not contiguous.
    qkv = torch.randn(batch, seq, 3, heads, head_dim, device=device, dtype=torch_dtype, requires_grad=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as trace:
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout).float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
    found["seconds"] = round(time.perf_counter() - start, 3)
    events = trace.key_averages()
    found["operators"] = sorted({e.key for e in events if "scaled_dot_product" in e.key or "_attention" in e.key})
    device_time = [(getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0), e.key) for e in events
                   if e.key not in found["operators"] and not e.key.startswith(("aten::", "cuda", "Memcpy"))]
    found["device_kernels"] = [key[:120] for t, key in sorted(device_time, reverse=True)[:6] if t > 0]
    found["kernel"] = kernel_of(found["operators"])
    return found


def kernel_of(operators: list[str]) -> str:
    """The SDPA backend an aten operator name says ran: cudnn, flash, efficient (memory-efficient) or math."""
    for marker, name in (("cudnn", "cudnn"), ("flash", "flash"), ("efficient", "efficient"), ("math", "math")):
        if any(marker in op for op in operators):
            return name
    return "unknown (" + ", ".join(operators) + ")" if operators else "unknown (no attention operator recorded)"


def probe(args: argparse.Namespace) -> dict:
    record, on_gpu = {"written_by": SCRIPT}, args.device == "cuda"
    specs = requirement_specs()
    steps = [("versions", lambda: versions(specs, on_gpu)), ("packages", lambda: package_problems(specs)),
             ("imports", lambda: import_failures(args.imports)), ("toolchain", lambda: toolchain(on_gpu)),
             ("attention", lambda: attention_probe(args.device, args.batch, args.heads, args.seq, args.head_dim,
                                                   args.dtype, args.dropout))]
    for name, step in steps:  # each probe reports its own failure; the others still run
        try:
            record[name] = step()
        except Exception as error:  # noqa: BLE001
            record[name] = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                            "traceback": traceback.format_exc()[-2000:]}
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from utils import ArgumentParser

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the record here too")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier --json record of this script")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--imports", nargs="*", default=[], help="modules whose import is tried")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--dropout", type=float, default=0.1, help="attention dropout, as in training")
    args = p.parse_args(argv)
    if min(args.batch, args.heads, args.seq, args.head_dim) < 1 or not 0 <= args.dropout < 1:
        p.error("--batch, --heads, --seq and --head_dim must be positive and --dropout in [0, 1)")
    if args.json is not None:
        from folders import check_report_file

        check_report_file(args.json, "--json", script=SCRIPT, overwrite=args.overwrite)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            from utils import UsageError

            raise UsageError("no CUDA device is visible to torch; pass --device cpu")
    record = probe(args)
    text = json.dumps(record, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.json)
    print(text)


if __name__ == "__main__":
    from utils import run_cli

    run_cli(main)
