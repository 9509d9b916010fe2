"""Size measures of the repository's Python, for the closing notes of refactorings (run from the repository root).

    python benchmarks/code_stats.py [ROOT]

Prints, over the non-test Python files (benchmarks/, notebooks/ and tests/ excluded): lines per file, the largest
functions (lines, def to last line), imports inside functions (by module imported), and the places (functions, or
module level) whose code names the store's layout (STORE_* constants, dataset_dict.json, dataset_info.json,
"prepare_data.json", datasets' load_from_disk/save_to_disk). README: words before `make demo` and in total.

Then, for each folder format, the modules whose code spells one of its names in a string: every string literal and
every literal part of an f-string counts (messages and --help included), docstrings and comments do not. Names
shared by several formats (README.md, checkpoints/, wandb/, .lock) are left out, since each owner declares its own.
The benchmarks are counted apart (gpu_check.py owns its own working folder). Also: train()'s parameters.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import Counter
from pathlib import Path

# What names the store's layout: its constants, its metadata files, datasets' own reader and writer of that layout.
LAYOUT = re.compile(r"STORE_(SPLITS|COLUMN|TOKENIZER_DIR|RECORD)\b|dataset_dict\.json|dataset_info\.json|"
                    r"prepare_data\.json\"|load_from_disk|save_to_disk")


# The distinctive names of each folder format a script writes (see the owners: store.py, run_folder.py,
# checkpoints.py, model_folder.py, qa_run_folder.py, classification_run_folder.py).
FORMATS = {
    "data store": ["prepare_data.json", "dataset_dict.json", "dataset_info.json"],
    "pretraining run folder": ["args.json", "metrics.jsonl", "curves.png", "final_model", "step_"],
    "checkpoint": ["manifest.json", "accelerate_state"],  # trainer_state.json: the Trainer's checkpoints' name too
    "model folder": ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer_record.json"],
    "QA run folder": ["finetune_args.json", "eval_results.json", "predictions.json", "predictions_detail.json",
                      "checkpoint-", "training_args.bin"],
    "classification run folder": ["classification_args.json", "predictions.jsonl"],
}


END = r"(?!\w)"  # a name that ends in a letter ends there: predictions.json is not predictions.jsonl


def literal_strings(tree: ast.AST) -> list[str]:
    """Every string constant of the code (f-strings' literal parts included), docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def naming_modules(files: list[Path]) -> dict[str, list[str]]:
    """{format: the files whose string literals name one of its names}."""
    found = {kind: [] for kind in FORMATS}
    for path in files:
        strings = literal_strings(ast.parse(path.read_text()))
        for kind, names in FORMATS.items():
            if any(re.search(rf"(?<![\w-]){re.escape(name)}{END if name[-1].isalnum() else ''}", text)
                   for text in strings for name in names):
                found[kind].append(path.name)
    return found


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*.py"))


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    files = python_files(root)
    print("lines per file:")
    for path in files:
        print(f"  {len(path.read_text().splitlines()):5d}  {path.name}")
    print(f"  {sum(len(p.read_text().splitlines()) for p in files):5d}  total")
    sizes, inner, layout = [], Counter(), []
    for path in files:
        text = path.read_text()
        tree = ast.parse(text)
        for fn in functions(tree):
            sizes.append((fn.end_lineno - fn.lineno + 1, f"{path.name}:{fn.name}"))
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
                    for name in names:
                        inner[(path.name, name.split(".")[0])] += 1
        spans = sorted(((fn.lineno, fn.end_lineno, fn.name) for fn in functions(tree)), key=lambda s: s[1] - s[0])
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if LAYOUT.search(code) and not code.lstrip().startswith(("import", "from", '"', "`", "*", "-")) \
                    and not re.match(r"\s*STORE_\w+ = ", code):
                inside = next((name for a, b, name in spans if a <= number <= b), "<module>")
                layout.append(f"{path.name}:{inside}")
    print("largest functions:")
    for size, name in sorted(sizes, reverse=True)[:5]:
        print(f"  {size:5d}  {name}")
    print(f"imports inside functions: {sum(inner.values())}")
    by_module = Counter()
    for (_, module), count in inner.items():
        by_module[module] += count
    print("  " + ", ".join(f"{m} {c}" for m, c in by_module.most_common()))
    places = sorted(set(layout))
    print(f"places that name the store's layout: {len(places)} in {len({p.split(':')[0] for p in places})} files")
    print("  " + ", ".join(places))
    for label, group in (("modules", files), ("benchmarks", sorted((root / "benchmarks").glob("*.py")))):
        print(f"{label} that spell a folder format's names in their code:")
        for kind, names in naming_modules(group).items():
            print(f"  {kind}: {len(names)} ({', '.join(names)})")
    train = root / "train.py"
    fn = next((f for f in functions(ast.parse(train.read_text())) if f.name == "train"), None) if train.is_file() \
        else None
    if fn is not None:
        print(f"train() parameters: {len(fn.args.args) + len(fn.args.kwonlyargs)}")
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text()
        before = text.split("make demo")[0]
        print(f"README: {len(before.split())} words before `make demo`, {len(text.split())} in total")


if __name__ == "__main__":
    main()
