"""The tokenizer: loading one (a local folder or a Hub id), telling two apart, and training RoBERTa's byte-level
BPE on our own text.

  * `load_tokenizer`: any failure is one UsageError naming the flag and the value;
  * `tokenizer_identity` and `tokenizer_mismatch`: THE rule that decides whether a tokenizer is the one that made
    some ids. A store (its record), a model folder (its tokenizer record, model_folder.py) and a checkpoint record
    the identity; `--init_from`, resume, fine-tuning and ask.py all ask `tokenizer_mismatch`, and nothing else
    decides it;
  * `train_bpe_tokenizer`: the byte-level BPE with RoBERTa's special tokens and ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hub_constants
from tokenizers import AddedToken, ByteLevelBPETokenizer

from utils import UsageError, first_line, looks_local

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in RoBERTa's vocabulary
BPE_MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # a byte-level BPE holds every byte, then the special tokens
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")  # any one marks a tokenizer folder
# Every file `save_pretrained` writes for the tokenizers used here (transformers 5 writes the first two; older
# versions and slow tokenizers the others): what a script that saved a tokenizer may remove again.
TOKENIZER_SAVED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                         "merges.txt")
SPARE_ROWS = 128  # the most rows an embedding table may have beyond its tokenizer (vocabulary padding)


def load_tokenizer(name_or_path: str | os.PathLike, *, flag: str, cache_dir: str | None = None):
    """The tokenizer in a local folder or of a Hub id; any failure is one UsageError naming `flag` and the value.

    A folder must hold tokenizer files: from a model folder without them, transformers would quietly build a
    tokenizer of special tokens only, and all that follows would run on garbage. Callers check what their task
    needs on top (a <mask> token, a fast tokenizer with offsets)."""
    # transformers here, not above: it takes seconds and pulls torch, and this module's identity rule is imported by
    # model.py (model_folder) and prepare_data.py, which must start fast (CONTRIBUTING.md, imports)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    name = str(name_or_path)
    folder = Path(name).expanduser()
    if looks_local(name) and not folder.is_dir():
        raise UsageError(f"{flag} {name} is not a folder: give a tokenizer folder or a Hub id")
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UsageError(f"{flag} {name} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}): save the tokenizer "
                         "in that folder (tokenizer.save_pretrained) or give another")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the failure is reported below, in one line
    try:
        return AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else name, cache_dir=cache_dir)
    except Exception as error:  # OSError, ValueError, HTTP errors...: all mean "cannot use this name"
        reason = first_line(error)
        offline = "HF_HUB_OFFLINE=1 is set and the Hub cache holds no copy of it; download it where the Hub is " \
                  "reachable, or give a local tokenizer folder" if hub_constants.HF_HUB_OFFLINE else \
                  "check the name and the network, or give a local tokenizer folder"
        where = "the folder's tokenizer files could not be read" if folder.is_dir() else (
            f"not a reachable Hub id; {offline}")
        raise UsageError(f"{flag} {name}: {where} ({reason})") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of what maps text to ids (vocabulary, merges, added tokens), to tell two tokenizers apart.

    Recorded with the ids it made (`tokenizer_identity`), so that reading them with another tokenizer is caught.
    Independent of how the tokenizer was loaded (max length, padding side...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str())["model"]
        content = {"model": model, "added": sorted(tokenizer.get_added_vocab().items())}
    else:
        content = {"vocab": sorted(tokenizer.get_vocab().items())}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=8).hexdigest()


def tokenizer_identity(tokenizer) -> dict:
    """What is recorded of the tokenizer that made some ids (in a store's record, beside a model): its fingerprint
    and its size. `tokenizer_mismatch` reads it back."""
    return {"vocab_size": len(tokenizer), "fingerprint": tokenizer_fingerprint(tokenizer)}


@dataclass(frozen=True)
class TokenizerMismatch:
    """Why a tokenizer is not the one expected; `recorded`: decided by a recorded fingerprint (else by the model's
    shape and special ids). str() is the reason, a phrase to follow "the tokenizer of X has"."""

    reason: str
    recorded: bool

    def __str__(self) -> str:
        return self.reason


def tokenizer_mismatch(tokenizer, recorded: dict | None = None, config=None) -> TokenizerMismatch | None:
    """THE rule for "is `tokenizer` the one that made these ids?": None when it is (or nothing can tell), else why not.

    * `recorded` (a `tokenizer_identity`: a store's record, a model folder's tokenizer record, another tokenizer's
      identity) with a fingerprint decides: the same fingerprint is the same tokenizer; any other is another one,
      even of the same size (which every shape check would let through);
    * `config` (a model's RobertaConfig) must agree as well: the tokenizer's ids fit its embedding table, its
      special tokens have the ids the model was trained with, and, where no fingerprint was recorded (the only
      witness left is the table), the table has at most SPARE_ROWS rows beyond the tokenizer (another model's
      tokenizer is usually far smaller or larger than the table)."""
    size = len(tokenizer)
    known = bool(recorded and recorded.get("fingerprint"))
    if known and recorded["fingerprint"] != (mine := tokenizer_fingerprint(tokenizer)):
        theirs = f"{recorded['vocab_size']:,}" if isinstance(recorded.get("vocab_size"), int) else "?"
        return TokenizerMismatch(f"fingerprint {mine} ({size:,} tokens) where {recorded['fingerprint']} ({theirs} "
                                 "tokens) was recorded", recorded=True)
    if config is None:
        return None
    if size > config.vocab_size:
        return TokenizerMismatch(f"{size:,} tokens but the model's embedding table only {config.vocab_size:,} rows",
                                 recorded=False)
    if not known and config.vocab_size >= size + SPARE_ROWS:
        return TokenizerMismatch(f"{size:,} tokens but the model's embedding table {config.vocab_size:,} rows",
                                 recorded=False)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ours, theirs = getattr(tokenizer, name, None), getattr(config, name)
        if ours is not None and ours != theirs:
            return TokenizerMismatch(f"{name} {ours} but the model's config says {theirs}", recorded=False)
    return None


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 512):
    """Train RoBERTa's byte-level BPE on `texts` and return it as a transformers `RobertaTokenizer`.

    Special tokens get RoBERTa's ids: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>` 4.
    """
    from transformers import RobertaTokenizer  # here: see load_tokenizer

    if vocab_size < BPE_MIN_VOCAB_SIZE:
        raise UsageError(f"a byte-level BPE vocabulary needs at least {BPE_MIN_VOCAB_SIZE} entries (256 bytes + "
                         f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    # transformers 5 takes the vocabulary and merges as objects (`vocab=`, `merges=`); the old
    # `vocab_file=`/`merges_file=` keywords are silently ignored and give a tokenizer of special tokens only.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # As in roberta-base, `<mask>` swallows the space before it: "known <mask> of" must encode as
    # ["known", "<mask>", "Ġof"], since the masked token was "Ġword" in training; without lstrip a lone "Ġ"
    # token would precede the mask and fill-mask predictions would be nonsense.
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    tokenizer = RobertaTokenizer(vocab=model["vocab"], merges=merges, mask_token=mask,
                                 model_max_length=model_max_length)
    sample = "Hello world, this is a tokenizer round trip."
    if tokenizer.decode(tokenizer(sample)["input_ids"], skip_special_tokens=True) != sample:
        raise RuntimeError("the trained tokenizer does not round-trip text; please report this as a bug")
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if encode("the <mask>") != encode("the") + [tokenizer.mask_token_id]:
        raise RuntimeError("the trained tokenizer does not strip the space before <mask>; please report this as a bug")
    return tokenizer
