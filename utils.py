"""Helpers shared by the three scripts.

Sections:
  * command-line errors: `UsageError` and `run_cli`, so that bad input ends in one clear line (exit code 2)
  * tokenizer: `train_bpe_tokenizer`, RoBERTa's byte-level BPE trained on our own text
  * dynamic masking: `mask_tokens` (BERT/RoBERTa's 80/10/10 recipe), used by train.py
  * SQuAD: feature preparation, post-processing and the official metric, used by finetune_roberta_qa.py
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in RoBERTa's vocabulary


# ----------------------------------------------------------------------------------------------------------------
# Command-line errors
# ----------------------------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A problem with what the user asked for. Printed as one line, without a traceback; exit code 2."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's `main`, turning a `UsageError` into `error: <message>` on stderr and exit code 2."""
    try:
        main()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write `obj` as indented JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on, for the record written beside its outputs."""
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for name in ["torch", "transformers", "datasets", "accelerate", "tokenizers"]:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 512):
    """Train RoBERTa's byte-level BPE on `texts` and return it as a transformers `RobertaTokenizer`.

    Special tokens get RoBERTa's ids: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>` 4.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        minimum = 256 + len(SPECIAL_TOKENS)
        raise UsageError(f"a byte-level BPE vocabulary needs at least {minimum} entries, got {vocab_size}")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    # transformers 5 takes the vocabulary and merges as objects (`vocab=`, `merges=`); the old
    # `vocab_file=`/`merges_file=` keywords are silently ignored and give a tokenizer of special tokens only.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = RobertaTokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)
    sample = "Hello world, this is a tokenizer round trip."
    if tokenizer.decode(tokenizer(sample)["input_ids"], skip_special_tokens=True) != sample:
        raise RuntimeError("the trained tokenizer does not round-trip text; please report this as a bug")
    return tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Dynamic masking (train.py)
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# SQuAD: features, post-processing, metrics (finetune_roberta_qa.py)
# ----------------------------------------------------------------------------------------------------------------
