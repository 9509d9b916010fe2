"""The tokenizer: loading one (a local folder or a Hub id), telling two apart, recording which one a model was
trained with, and training RoBERTa's byte-level BPE on our own text.

  * `load_tokenizer`: any failure is one UsageError naming the flag and the value;
  * `tokenizer_fingerprint`: a short hash of what maps text to ids (a store and a model record it);
  * `record_tokenizer` / `tokenizer_swapped`: the fingerprint beside a saved model, and the check against it;
  * `train_bpe_tokenizer`: the byte-level BPE with RoBERTa's special tokens and ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from utils import UsageError, first_line, looks_local

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in RoBERTa's vocabulary
BPE_MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # a byte-level BPE holds every byte, then the special tokens
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")  # any one marks a tokenizer folder


def load_tokenizer(name_or_path: str | os.PathLike, *, flag: str, cache_dir: str | None = None):
    """The tokenizer in a local folder or of a Hub id; any failure is one UsageError naming `flag` and the value.

    A folder must hold tokenizer files: from a model folder without them, transformers would quietly build a
    tokenizer of special tokens only, and all that follows would run on garbage. Callers check what their task
    needs on top (a <mask> token, a fast tokenizer with offsets)."""
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
        where = "the folder's tokenizer files could not be read" if folder.is_dir() else (
            "not a reachable Hub id; check the name and the network, or give a local tokenizer folder")
        raise UsageError(f"{flag} {name}: {where} ({reason})") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of what maps text to ids (vocabulary, merges, added tokens), to tell two tokenizers apart.

    Recorded in a store's prepare_data.json so that training with another tokenizer than the one that made the
    store's ids is refused. Independent of how the tokenizer was loaded (max length, padding side...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str())["model"]
        content = {"model": model, "added": sorted(tokenizer.get_added_vocab().items())}
    else:
        content = {"vocab": sorted(tokenizer.get_vocab().items())}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=8).hexdigest()


TOKENIZER_RECORD = "tokenizer_record.json"  # in a model folder train.py saves: the fingerprint of its tokenizer


def record_tokenizer(folder: str | os.PathLike, tokenizer) -> None:
    """Write TOKENIZER_RECORD beside a saved model: the fingerprint of the tokenizer it was trained with."""
    (Path(folder) / TOKENIZER_RECORD).write_text(json.dumps({"fingerprint": tokenizer_fingerprint(tokenizer),
                                                             "vocab_size": len(tokenizer)}) + "\n")


def tokenizer_swapped(folder: str | os.PathLike, tokenizer) -> str | None:
    """Why `tokenizer` is not the one the model of `folder` was trained with, by the fingerprint train.py recorded
    there (None when it is, or when nothing was recorded). A tokenizer swapped for another of the same size passes
    every shape check, and the model would read its ids as other tokens."""
    try:
        recorded = json.loads((Path(folder) / TOKENIZER_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("fingerprint") in (None, tokenizer_fingerprint(tokenizer)):
        return None
    return (f"the tokenizer in {folder} is not the one its model was trained with (fingerprint "
            f"{tokenizer_fingerprint(tokenizer)}, {len(tokenizer):,} tokens; recorded {recorded['fingerprint']}, "
            f"{recorded.get('vocab_size', '?'):,} tokens): the model would read its ids as other tokens")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 512):
    """Train RoBERTa's byte-level BPE on `texts` and return it as a transformers `RobertaTokenizer`.

    Special tokens get RoBERTa's ids: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>` 4.
    """
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

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
