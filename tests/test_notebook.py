"""The walkthrough notebook runs top to bottom, offline, and shows a model that learned something.

Executes notebooks/roberta_walkthrough.ipynb with nbclient on an in-memory copy (the committed file with its
outputs is left as it is), in notebooks/ as a reader would, on a kernel that runs this very Python, so that it
sees the packages of this test run. The full run takes about four minutes on a 2-core CPU; a second, short run
(30 pretraining steps, 10 question-answering steps) takes the `TEXT_FILE` path.
"""

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "roberta_walkthrough.ipynb"
BUILDER = ROOT / "notebooks" / "build_walkthrough.py"
CELL_TIMEOUT_S = 900  # generous: the training cell takes about two and a half minutes on an idle core
REPOSITORY_MODULES = {"model", "utils", "tokenization", "demo_world", "prepare_data", "corpora", "store", "batches",
                      "qa", "classification"}
SENTENCES_GAP = 6  # accuracy points pretraining must add to sentence classification (measured: 62.2 vs 50.0)
TRAINING_ONLY_PACKAGES = {"datasets", "evaluate", "accelerate", "wandb"}  # requirements.txt, not the notebook's


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that starts `sys.executable -m ipykernel_launcher`, found first through JUPYTER_PATH.

    The machine's own `python3` kernelspec may be missing or start another interpreter (a system Python without
    torch); this one cannot. ipykernel is in requirements-dev.txt: without it the test fails, it is not skipped."""
    import ipykernel  # noqa: F401

    name = "roberta-walkthrough-test"
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    (jupyter_dir / "kernels" / name).mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (test)", "language": "python"}
    (jupyter_dir / "kernels" / name / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(jupyter_dir))
        yield name


def run_notebook(kernel_name: str, edits: dict[str, str] | None = None):
    """Execute a fresh copy of the notebook, with `edits` ({old: new} in code cells) applied and a last cell that
    lists the training-only packages the run imported; returns (notebook, all its text output). Any cell error
    raises CellExecutionError with the cell and traceback."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":  # start from a clean slate: what is checked must come from this run
            cell.outputs, cell.execution_count = [], None
    for old, new in (edits or {}).items():
        matches = [cell for cell in notebook.cells if cell.cell_type == "code" and old in cell.source]
        assert len(matches) == 1, f"expected one code cell containing {old!r}"
        matches[0].source = matches[0].source.replace(old, new)
    notebook.cells.append(nbformat.v4.new_code_cell(
        f"import sys\nprint('training-only packages imported:', sorted(set({sorted(TRAINING_ONLY_PACKAGES)!r}) & "
        "set(sys.modules)))"))
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=kernel_name, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return notebook, "\n".join(_texts(notebook))


def _texts(notebook) -> list[str]:
    """Each cell's text output. A cell's printed lines may arrive in several stream outputs, split anywhere
    between two writes: they are concatenated as they were printed."""
    texts = []
    for cell in notebook.cells:
        pieces = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                pieces.append(output.text)
            elif "text/plain" in output.get("data", {}):
                pieces.append(output.data["text/plain"] + "\n")
        texts.append("".join(pieces))
    return texts


def _plots(notebook) -> list:
    return [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_walkthrough", BUILDER)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    return builder


def _imported_modules(source: str) -> set[str]:
    """Top-level names of the modules a code cell imports (IPython magics skipped)."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%")))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_committed_notebook_is_the_builders_executed_and_small():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    built = _load_builder().build()
    assert [(c.cell_type, c.source) for c in notebook.cells] == [(c.cell_type, c.source) for c in built.cells], (
        "the committed notebook is not what notebooks/build_walkthrough.py writes: edit the builder, then run "
        "`python notebooks/build_walkthrough.py --execute`")
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs for cell in code_cells if "print(" in cell.source), "commit the notebook executed"
    assert not any(output.output_type == "error" for cell in code_cells for output in cell.outputs)
    assert len(_plots(notebook)) == 1, "the loss plot"
    assert NOTEBOOK.stat().st_size < 1_000_000


def test_colab_badge_and_clone_step_only_for_a_named_repository_and_only_the_needed_packages_are_installed():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    badge = re.search(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/", notebook.cells[0].source)
    setup = notebook.cells[1].source
    clone = re.search(r'REPO_URL = "https://github\.com/([\w.-]+/[\w.-]+)"', setup)
    if _load_builder().PUBLISHED:
        assert badge and clone and badge[1] == clone[1], "the Colab badge and the clone URL must name one repository"
    else:  # no repository named yet: no badge, no clone step, no placeholder link anywhere
        assert not badge and not clone and "git clone" not in setup
        assert not any("OWNER/REPO" in cell.source for cell in notebook.cells)

    assert "%pip install" in setup and "if missing_requirements():" in setup, "installs must be conditional"
    requirements = ast.literal_eval(re.search(r"REQUIREMENTS = (\{.*?\})", setup, re.DOTALL)[1])
    assert not TRAINING_ONLY_PACKAGES & set(requirements), "the notebook must not install the training stack"
    imported = set().union(*(_imported_modules(c.source) for c in notebook.cells if c.cell_type == "code"))
    third_party = imported - set(sys.stdlib_module_names) - REPOSITORY_MODULES
    assert third_party <= set(requirements), f"imported but never installed: {third_party - set(requirements)}"


@pytest.mark.slow
def test_notebook_runs_and_the_model_learns(kernel_name):
    notebook, text = run_notebook(kernel_name)
    assert "requirements: all present" in text  # nothing was installed: the test environment has it all
    assert "training-only packages imported: []" in text  # so Colab needs none of them
    assert "round trip exact: True | <unk> used: False" in text
    assert len(_plots(notebook)) == 1

    # Section 4 recomputes the model by hand from its weights (the cells assert it too; these lines must be there).
    differences = re.findall(r"(embeddings|self-attention|layer 0) by hand vs the model's: max difference (\S+)", text)
    assert [name for name, _ in differences] == ["embeddings", "self-attention", "layer 0"]
    assert all(float(value) < 1e-5 for _, value in differences), differences
    head = re.search(r"loss by hand ([\d.]+), the model's ([\d.]+)", text)
    assert head and abs(float(head[1]) - float(head[2])) < 1e-4

    losses = re.search(r"held-out MLM loss: ([\d.]+) before training, ([\d.]+) after", text)
    assert losses, "the summary line is missing"
    initial, final = float(losses[1]), float(losses[2])
    assert initial > 7.0  # about ln(2000) = 7.6 for an untrained model
    assert final < initial - 3.0, f"training barely moved the held-out loss: {initial} -> {final}"

    top5 = re.search(r"probes with the answer in the top 5: (\d+)/(\d+) before, (\d+)/\d+ after", text)
    assert top5, "the probe summary is missing"
    before, total, after = int(top5[1]), int(top5[2]), int(top5[3])
    assert before <= 1 and after >= total // 2, f"fill-in-the-blank: {before}/{total} before, {after}/{total} after"

    # Section 8: a long context cut into windows that overlap by doc_stride tokens.
    shared = [int(n) for n in re.findall(r"^window \d+: \d+ context tokens, (\d+) shared with the previous", text,
                                         flags=re.MULTILINE)]
    assert shared and all(n == 24 for n in shared), f"consecutive windows must share doc_stride = 24 tokens: {shared}"

    qa = re.search(r"exact match / F1: ([\d.]+) / ([\d.]+) after pretraining, ([\d.]+) / ([\d.]+) from random", text)
    assert qa, "the question-answering summary is missing"
    pretrained_f1, random_f1 = float(qa[2]), float(qa[4])
    assert pretrained_f1 > 35, f"QA fine-tuning learned little: F1 {pretrained_f1} (random spans score about 8)"
    assert pretrained_f1 > random_f1 + 10, f"pretraining did not help QA: F1 {pretrained_f1} vs {random_f1}"

    # Section 9: sentence classification (acceptability) from both backbones.
    scores = re.search(r"held-out sentences, accuracy: ([\d.]+) after pretraining, ([\d.]+) from random weights", text)
    assert scores, "the sentence classification summary is missing"
    pretrained_accuracy, random_accuracy = float(scores[1]), float(scores[2])
    assert pretrained_accuracy > random_accuracy + SENTENCES_GAP, f"{pretrained_accuracy} vs {random_accuracy}"

    asked = re.findall(r"^paragraph: (.*)\n((?:Q: .*\nA: .*\n)+)", text, flags=re.MULTILINE)
    assert asked, "no question was asked"
    for paragraph, questions_and_answers in asked:
        for answer, start in re.findall(r"^A: (.*) \(character (-?\d+);", questions_and_answers, flags=re.MULTILINE):
            answer = ast.literal_eval(answer)  # printed with !r
            assert answer and paragraph[int(start) : int(start) + len(answer)] == answer, (answer, start, paragraph)


@pytest.mark.slow
def test_notebook_trains_on_a_text_file(kernel_name, tmp_path):
    """TEXT_FILE replaces the demo corpus, and the probes come from the file's held-out sentences."""
    import demo_world

    documents = demo_world.generate_documents(seed=1, num_documents=120)
    text_file = tmp_path / "my text.txt"
    text_file.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    edits = {"TEXT_FILE = None": f"TEXT_FILE = {str(text_file)!r}", "TRAIN_STEPS = 3000": "TRAIN_STEPS = 30",
             "WARMUP_STEPS = 150": "WARMUP_STEPS = 5", "QA_TRAIN_STEPS = 400": "QA_TRAIN_STEPS = 10",
             "SENTENCES_TRAIN_STEPS = 300": "SENTENCES_TRAIN_STEPS = 10"}
    notebook, text = run_notebook(kernel_name, edits)
    assert f"{len(documents):,} documents" in text
    assert "30 steps" in text
    probes = re.findall(r"^(.*<mask>.*)\n    answer '(\w+)'", text, flags=re.MULTILINE)
    assert len(probes) == 2 * 8, "8 probes, shown before and after training"
    heldout = " ".join(documents[19::20])
    for masked, answer in probes:
        assert masked.replace("<mask>", answer) in heldout  # a held-out sentence, one of its words hidden
