"""Size measures of the repository's Python, for the closing notes of refactorings (run from the repository root).

    python benchmarks/code_stats.py [ROOT]

Prints, over the non-test Python files (benchmarks/, notebooks/ and tests/ excluded): lines per file, the largest
functions (lines, def to last line), imports inside functions (by module imported), and the places (functions, or
module level) whose code names the store's layout (STORE_* constants, dataset_dict.json, dataset_info.json,
"prepare_data.json", datasets' load_from_disk/save_to_disk). README: words before `make demo` and in total.
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
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text()
        before = text.split("make demo")[0]
        print(f"README: {len(before.split())} words before `make demo`, {len(text.split())} in total")


if __name__ == "__main__":
    main()
