"""--help of every command line: each flag has a one-line help and says its default (or that it is required)."""

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
