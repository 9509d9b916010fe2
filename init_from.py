"""train.py --init_from: continue pretraining a published RoBERTa on your own text.

Domain- and task-adaptive pretraining (Gururangan et al. 2020, "Don't Stop Pretraining",
https://arxiv.org/abs/2004.10964): more masked-LM updates of a pretrained checkpoint on in-domain text, before
fine-tuning. See docs/continued_pretraining.md for the recipe.

`checkpoint_config` (called by train.py's validate, before anything is built) finds the checkpoint (a Hub id, a
transformers folder, or a train.py final_model/ or checkpoints/step_N/), and checks that it fits the run:
  * the architecture is the checkpoint's config. An architecture flag given on the command line that disagrees is
    refused, naming both values; a default that disagrees is not used. The run's arguments then hold the
    checkpoint's values, so that args.json and the resume checks say what trains. Dropout is the recipe's: a
    dropout flag given on the command line replaces the checkpoint's rate;
  * the checkpoint has an MLM head (a classifier's checkpoint would start with a random one);
  * the store's ids were made by the checkpoint's tokenizer (same fingerprint, a vocabulary that fits), else the
    prepare_data.py command that would make a fitting store is given;
  * its position table is long enough for --context_length.
`load_model` (train.py's setup, before accelerator.prepare) builds the model with the checkpoint's weights on every
process. What trains is then those weights under every distributed type: DDP broadcasts rank 0's parameters when
it wraps, and FSDP with cpu_ram_efficient_loading moves the other ranks to the meta device and broadcasts rank 0's
state dict (accelerate's fsdp2_prepare_model captures it before sharding), so loading must happen before prepare.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
from pathlib import Path

from tokenization import TOKENIZER_FILES, load_tokenizer, tokenizer_fingerprint
from utils import UsageError, is_main_process

# flag -> config field: the architecture, which comes from the checkpoint (--mlp_ratio is intermediate/hidden)
ARCHITECTURE = {"num_transformer_blocks": "num_hidden_layers", "num_attention_heads": "num_attention_heads",
                "embedding_dimension": "hidden_size", "layer_norm_eps": "layer_norm_eps"}
DROPOUT = {"hidden_dropout_p": "hidden_dropout_prob", "attention_dropout_p": "attention_probs_dropout_prob"}


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options written on the command line: `argv` parsed again with no defaults."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(argv)
    return set(vars(namespace))


def checkpoint_config(args: argparse.Namespace, given: set[str], tokenizer, record: dict):
    """(config, local folder) of --init_from, checked against the flags and the store; one UsageError otherwise.

    Sets the architecture fields of `args` to the checkpoint's (and the dropout ones not given on the command
    line), and the config's `init_from` to the checkpoint's provenance."""
    from model import RobertaConfig, checkpoint_weight_names, resolve_checkpoint

    source = args.init_from
    try:
        folder = resolve_checkpoint(source, need_weights=True)
        saved = json.loads((folder / "config.json").read_text())
        dropout = {field: getattr(args, flag) for flag, field in DROPOUT.items() if flag in given}
        config = RobertaConfig.from_dict(saved, **dropout)
        weights = checkpoint_weight_names(folder)
    except ValueError as error:
        raise UsageError(f"--init_from: {error}") from None
    if not any(name.startswith("lm_head.") for name in weights):
        raise UsageError(f"--init_from {source} has no masked-LM head (no lm_head.* weights): it is not a "
                         "RobertaForMaskedLM checkpoint, and continued pretraining would start from a random head")
    check_architecture_flags(args, given, config, source)
    if args.context_length > config.max_sequence_length:
        raise UsageError(f"--init_from {source} has position embeddings for {config.max_sequence_length} tokens "
                         f"(max_position_embeddings {config.max_position_embeddings}), fewer than --context_length "
                         f"{args.context_length}: prepare a store of --context_length {config.max_sequence_length} or "
                         "less")
    check_tokenizer(args, folder, config, tokenizer, record)
    config.init_from = provenance(source, folder, saved.get("init_from"))
    if Path(source).expanduser().is_dir():  # one spelling of a folder, for the resume check
        args.init_from = str(Path(source).expanduser().resolve())
    args.num_transformer_blocks, args.num_attention_heads = config.num_hidden_layers, config.num_attention_heads
    args.embedding_dimension, args.layer_norm_eps = config.hidden_size, config.layer_norm_eps
    args.mlp_ratio = config.intermediate_size / config.hidden_size
    args.hidden_dropout_p, args.attention_dropout_p = config.hidden_dropout_prob, config.attention_probs_dropout_prob
    args.initializer_range = config.initializer_range
    return config, folder


def check_architecture_flags(args: argparse.Namespace, given: set[str], config, source: str) -> None:
    """Refuse architecture flags given on the command line that disagree with the checkpoint (all named at once)."""
    differ = [f"--{flag} {getattr(args, flag)} (the checkpoint's {field} is {getattr(config, field)})"
              for flag, field in ARCHITECTURE.items()
              if flag in given and getattr(args, flag) != getattr(config, field)]
    if "mlp_ratio" in given and round(args.mlp_ratio * config.hidden_size) != config.intermediate_size:
        differ.append(f"--mlp_ratio {args.mlp_ratio} (the checkpoint's intermediate_size is {config.intermediate_size}"
                      f" = {config.intermediate_size / config.hidden_size:g} x hidden_size {config.hidden_size})")
    if differ:
        raise UsageError(f"--init_from {source} disagrees with {'; '.join(differ)}: the architecture comes from the "
                         "checkpoint; leave out these flags")


def check_tokenizer(args: argparse.Namespace, folder: Path, config, tokenizer, record: dict) -> None:
    """The store's ids must be the checkpoint's tokens: its tokenizer's fingerprint and a vocabulary that fits."""
    source, store = args.init_from, args.path_to_prepped_data
    made_with = record.get("tokenizer", {}).get("from") or "an unrecorded tokenizer"
    made_with = "a tokenizer trained on its text" if made_with == "trained" else made_with
    theirs = None
    if not Path(source).expanduser().is_dir() or any((folder / name).is_file() for name in TOKENIZER_FILES):
        theirs = load_tokenizer(source, flag="--init_from")  # a Hub id's tokenizer files come with the weights'
    elif is_main_process():
        print(f"warning: --init_from {source} holds no tokenizer files, so the store's tokenizer can be checked by "
              "its vocabulary size only", flush=True)
    ours = tokenizer_fingerprint(tokenizer)
    same = tokenizer_fingerprint(theirs) == ours if theirs is not None else len(tokenizer) == config.vocab_size
    if not same or len(tokenizer) > config.vocab_size:
        size = f"vocabulary {len(theirs):,}, " if theirs is not None else ""
        raise UsageError(
            f"the store {store} was tokenized with {made_with} (vocabulary {len(tokenizer):,}, fingerprint {ours}), "
            f"not with the tokenizer of --init_from {source} ({size}model vocabulary {config.vocab_size:,}): its ids "
            f"would be read as other tokens. Make a store with the checkpoint's tokenizer: "
            f"{fitting_prepare_command(record, store, source, args.context_length)}")
    if config.pad_token_id != tokenizer.pad_token_id:
        raise UsageError(f"--init_from {source} has pad_token_id {config.pad_token_id}, the store's tokenizer "
                         f"{tokenizer.pad_token_id}: positions would be numbered differently")


def fitting_prepare_command(record: dict, store: str, source: str, context_length: int) -> str:
    """The store's own prepare_data.py command with the checkpoint's tokenizer, into a new folder."""
    drop = {"--hf_model_name": 1, "--train_tokenizer": 1, "--path_to_data_store": 1, "--overwrite": 0,
            "--no-overwrite": 0}  # flag -> how many values follow it
    words, kept, i = shlex.split(record.get("command", ""))[2:], [], 0
    while i < len(words):
        name = words[i].split("=")[0]
        if name in drop:
            i += 1 + (0 if "=" in words[i] else drop[name])
        else:
            kept.append(words[i])
            i += 1
    if not kept:
        kept = ["<your source flags>", "--context_length", str(context_length)]
    new_store = str(Path(store)).rstrip("/") + "_retokenized"
    return shlex.join(["python", "prepare_data.py", *kept, "--hf_model_name", source, "--path_to_data_store",
                       new_store]).replace("'<your source flags>'", "<your source flags>")


def provenance(source: str, folder: Path, earlier: dict | None) -> dict:
    """What a model was continued from: the id or path, the Hub revision (commit) when downloaded, the weight file's
    SHA-256 (the checksum the Hub lists for it), and that checkpoint's own record when it was itself continued."""
    weights = next(folder / name for name in ("model.safetensors", "pytorch_model.bin") if (folder / name).is_file())
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    local = Path(source).expanduser().is_dir()
    record = {"source": str(Path(source).expanduser().resolve()) if local else source,
              "revision": None if local or folder.parent.name != "snapshots" else folder.name,
              "weights": weights.name, "sha256": digest.hexdigest()}
    return {**record, "init_from": earlier} if earlier else record


def describe(record: dict) -> str:
    """One line: 'initialised from X (revision R, model.safetensors sha256 S)'."""
    revision = f"revision {record['revision']}, " if record.get("revision") else ""
    return f"initialised from {record['source']} ({revision}{record['weights']} sha256 {record['sha256'][:16]}...)"


def add_to_readme(readme: Path, record: dict) -> None:
    with readme.open("a") as f:
        f.write(f"\nThe model was {describe(record)}; the full record is model_config.init_from in args.json and "
                "init_from in each model folder's config.json.\n")


def load_model(folder: Path, config):
    """Our RobertaForMaskedLM with the checkpoint's weights, MLM head included (missing or mis-shaped weights are an
    error); `config` is checkpoint_config's, dropout and provenance included."""
    from model import RobertaForMaskedLM

    overrides = {"hidden_dropout_prob": config.hidden_dropout_prob, "init_from": config.init_from,
                 "attention_probs_dropout_prob": config.attention_probs_dropout_prob}
    model = RobertaForMaskedLM.from_pretrained(folder, **overrides)
    assert model.config == config, (model.config, config)
    return model
