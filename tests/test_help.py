"""--help of every command line: each flag has a one-line help and says its default (or that it is required), and
every function it (or the README and docs) names exists."""

import importlib
import re
from pathlib import Path

import pytest

import ask
import finetune_roberta_qa
import prepare_data
import train


@pytest.mark.parametrize("module", [prepare_data, train, finetune_roberta_qa, ask], ids=lambda m: m.__name__)
def test_every_flag_has_help_and_shows_its_default(module):
    parser = module.build_parser()
    text = " ".join(parser.format_help().split())  # as if the terminal were infinitely wide
    unwrapped = "".join(text.split())  # argparse may also wrap after a hyphen
    flags = [action for action in parser._actions if action.dest != "help"]
    assert len(flags) >= 10
    for action in flags:
        assert action.help and len(action.help) > 10, f"{action.option_strings} has no help text"
        shown = " ".join(parser._get_formatter()._expand_help(action).split())
        assert "".join(shown.split()) in unwrapped, action.dest
        # the formatter's "(default: value)", or the help's own words for a default that is no plain value
        assert shown.endswith("(required)") if action.required else "(default: " in shown, shown
    assert parser.epilog and f"python {module.__name__}.py" in parser.epilog  # the commands people run
    assert module.__doc__.split("\n\n")[-1].split()[0] in text  # the whole description, not its first paragraph


def test_train_help_says_the_defaults_are_a_full_roberta_base_run():
    text = " ".join(train.build_parser().format_help().split())
    assert "100,000 updates" in text and "multi-GPU job" in text and "--resume_from_checkpoint latest" in text


ROOT = Path(__file__).resolve().parent.parent
FILE_SUFFIXES = {"py", "json", "jsonl", "md", "safetensors", "bin", "txt", "png", "ipynb"}  # model.safetensors: a file


def test_every_module_attribute_named_in_help_readme_and_docs_exists():
    """`utils.answer_questions` in ask.py's --help outlived its move to qa.py; a reader following it found nothing."""
    modules = sorted(p.stem for p in ROOT.glob("*.py"))
    named = re.compile(rf"(?<![\w/.])({'|'.join(modules)})\.([A-Za-z_]\w*)")
    texts = {f"{m.__name__}.py --help": m.build_parser().format_help() for m in (prepare_data, train,
                                                                                  finetune_roberta_qa, ask)}
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")]})
    missing = [f"{where}: {module}.{name}" for where, text in texts.items()
               for module, name in sorted(set(named.findall(" ".join(text.split()))))
               if name not in FILE_SUFFIXES and not hasattr(importlib.import_module(module), name)]
    assert not missing
