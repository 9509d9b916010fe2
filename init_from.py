"""train.py --init_from: continue pretraining a published RoBERTa on your own text.

Domain- and task-adaptive pretraining (Gururangan et al. 2020, "Don't Stop Pretraining",
https://arxiv.org/abs/2004.10964): more masked-LM updates of a pretrained checkpoint on in-domain text, before
fine-tuning. See docs/continued_pretraining.md for the recipe.

`checkpoint_config` (called by train.py's validate, before anything is built) finds the checkpoint (a Hub id, a
transformers folder, or a train.py final_model/ or checkpoints/step_N/), and checks that it fits the run:
  * the architecture is the checkpoint's config. An architecture flag given on the command line that disagrees is
    refused, naming both values; a default that disagrees is not used. The checkpoint's values are returned as the
    run's arguments in effect (train.py's plan records them in args.json and compares them on resume; the parsed
    flags are left as the user gave them). Dropout is the recipe's: a dropout flag given on the command line
    replaces the checkpoint's rate;
  * the checkpoint has an MLM head (a classifier's checkpoint would start with a random one);
  * the store's ids were made by the checkpoint's tokenizer (tokenization's one rule: the same fingerprint, else a
    vocabulary that fits), else the prepare_data.py command that would make a fitting store is given;
  * its position table is long enough for the store's blocks.
`load_model` (train.py's setup, before accelerator.prepare) builds the model with the checkpoint's weights on every
process. What trains is then those weights under every distributed type: DDP broadcasts rank 0's parameters when
it wraps, and FSDP with cpu_ram_efficient_loading moves the other ranks to the meta device and broadcasts rank 0's
state dict (accelerate's fsdp2_prepare_model captures it before sharding), so loading must happen before prepare.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
from pathlib import Path

import model_folder
from model import RobertaConfig, RobertaForMaskedLM
from tokenization import TOKENIZER_FILES, load_tokenizer, tokenizer_fingerprint, tokenizer_identity, tokenizer_mismatch
from utils import UsageError, is_main_process

# train.py's architecture flags -> RobertaConfig fields (--mlp_ratio is intermediate_size / hidden_size): the one
# table of which flag sets which field. ARCHITECTURE comes from the checkpoint; DROPOUT from a flag given.
ARCHITECTURE = {"num_transformer_blocks": "num_hidden_layers", "num_attention_heads": "num_attention_heads",
                "embedding_dimension": "hidden_size", "layer_norm_eps": "layer_norm_eps"}
DROPOUT = {"hidden_dropout_p": "hidden_dropout_prob", "attention_dropout_p": "attention_probs_dropout_prob"}
FLAG_FIELDS = {**ARCHITECTURE, **DROPOUT, "initializer_range": "initializer_range"}
MLP_RATIO = "mlp_ratio"


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options written on the command line: `argv` parsed again with no defaults."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(argv)
    return set(vars(namespace))


def config_arguments(config) -> dict:
    """The architecture flags' values that give `config` (what a run continued from it records as its arguments)."""
    return {**{flag: getattr(config, field) for flag, field in FLAG_FIELDS.items()},
            MLP_RATIO: config.intermediate_size / config.hidden_size}


def checkpoint_config(args: argparse.Namespace, given: set[str], store) -> tuple[RobertaConfig, Path, dict]:
    """(config, local folder, arguments) of --init_from, checked against the flags and the store (a store.Store);
    one UsageError otherwise. `arguments`: the values of the run's arguments that the checkpoint decides (its
    architecture, the dropout not given on the command line, --init_from in one spelling); the config's `init_from`
    is the checkpoint's provenance."""
    source = args.init_from
    try:
        folder = model_folder.resolve(source, need_weights=True)
        saved = model_folder.read_config(folder)
        dropout = {field: getattr(args, flag) for flag, field in DROPOUT.items() if flag in given}
        config = RobertaConfig.from_dict(saved, **dropout)
        weights = model_folder.weight_names(folder)
    except ValueError as error:
        raise UsageError(f"--init_from: {error}") from None
    if not any(name.startswith("lm_head.") for name in weights):
        raise UsageError(f"--init_from {source} has no masked-LM head (no lm_head.* weights): it is not a "
                         "RobertaForMaskedLM checkpoint, and continued pretraining would start from a random head")
    check_architecture_flags(args, given, config, source)
    if store.block_length > config.max_sequence_length:
        raise UsageError(f"--init_from {source} has position embeddings for {config.max_sequence_length} tokens "
                         f"(max_position_embeddings {config.max_position_embeddings}), fewer than --context_length "
                         f"{store.block_length}, the store's blocks: prepare a store of --context_length "
                         f"{config.max_sequence_length} or less")
    check_tokenizer(source, folder, config, store)
    config.init_from = provenance(source, folder, saved.get("init_from"))
    local = Path(source).expanduser().is_dir()  # one spelling of a folder, for the resume check
    return config, folder, {**config_arguments(config), "init_from": str(Path(source).expanduser().resolve())
                            if local else source}


def check_architecture_flags(args: argparse.Namespace, given: set[str], config, source: str) -> None:
    """Refuse architecture flags given on the command line that disagree with the checkpoint (all named at once)."""
    differ = [f"--{flag} {getattr(args, flag)} (the checkpoint's {field} is {getattr(config, field)})"
              for flag, field in ARCHITECTURE.items()
              if flag in given and getattr(args, flag) != getattr(config, field)]
    if MLP_RATIO in given and round(args.mlp_ratio * config.hidden_size) != config.intermediate_size:
        differ.append(f"--mlp_ratio {args.mlp_ratio} (the checkpoint's intermediate_size is {config.intermediate_size}"
                      f" = {config.intermediate_size / config.hidden_size:g} x hidden_size {config.hidden_size})")
    if differ:
        raise UsageError(f"--init_from {source} disagrees with {'; '.join(differ)}: the architecture comes from the "
                         "checkpoint; leave out these flags")


def check_tokenizer(source: str, folder: Path, config, store) -> None:
    """The store's ids must be the checkpoint's tokens, by tokenization's one rule: the fingerprint of the
    checkpoint's tokenizer (its files, else its tokenizer record), else a vocabulary that fits its embeddings."""
    tokenizer, recorded = store.tokenizer, model_folder.recorded_tokenizer(folder)
    if not Path(source).expanduser().is_dir() or any((folder / name).is_file() for name in TOKENIZER_FILES):
        # a Hub id's tokenizer files come with the weights'
        recorded = tokenizer_identity(load_tokenizer(source, flag="--init_from"))
    elif recorded is None and is_main_process():
        print(f"warning: --init_from {source} holds no tokenizer files, so the store's tokenizer can be checked by "
              "its vocabulary size only", flush=True)
    if mismatch := tokenizer_mismatch(tokenizer, recorded, config):
        raise UsageError(
            f"the store {store.path} was tokenized with {store.made_with} (vocabulary {len(tokenizer):,}, fingerprint "
            f"{tokenizer_fingerprint(tokenizer)}), not with the tokenizer of --init_from {source} (this one has "
            f"{mismatch}; model vocabulary {config.vocab_size:,}): its ids would be read as other tokens. Make a "
            f"store with the checkpoint's tokenizer: "
            f"{fitting_prepare_command(store.command, store.path, source, store.block_length)}")


def fitting_prepare_command(command: str, store: str | Path, source: str, context_length: int) -> str:
    """The store's own prepare_data.py command with the checkpoint's tokenizer, into a new folder."""
    drop = {"--hf_model_name": 1, "--train_tokenizer": 1, "--path_to_data_store": 1, "--overwrite": 0,
            "--no-overwrite": 0}  # flag -> how many values follow it
    words, kept, i = shlex.split(command)[2:], [], 0
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
    weights = model_folder.weights_file(folder)
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


def load_model(folder: Path, config):
    """Our RobertaForMaskedLM with the checkpoint's weights, MLM head included (missing or mis-shaped weights are an
    error); `config` is checkpoint_config's, dropout and provenance included."""
    overrides = {"hidden_dropout_prob": config.hidden_dropout_prob, "init_from": config.init_from,
                 "attention_probs_dropout_prob": config.attention_probs_dropout_prob}
    model = RobertaForMaskedLM.from_pretrained(folder, **overrides)
    assert model.config == config, (model.config, config)
    return model
