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
from checkpoints import read_state
from model import MLM_TIED_WEIGHTS, RobertaConfig, RobertaForMaskedLM
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


def checkpoint_config(args: argparse.Namespace, given: set[str], store,
                      resumed: Path | None = None) -> tuple[RobertaConfig, Path | None, dict]:
    """(config, local folder, arguments) of --init_from, checked against the flags and the store (a store.Store);
    one UsageError listing every problem otherwise. `arguments`: the values of the run's arguments that the
    checkpoint decides (its architecture, the dropout not given on the command line, --init_from in one spelling);
    the config's `init_from` is the checkpoint's provenance.

    `resumed`: a checkpoint of this run to continue from. It holds every weight, and the provenance recorded when
    the run started, so the --init_from folder or Hub cache is not read (it may be gone, or its `main` moved) and the
    folder returned is None."""
    source = args.init_from
    try:
        folder = resumed or model_folder.resolve(source, need_weights=True)
        saved = model_folder.read_config(folder)
        dropout = {field: getattr(args, flag) for flag, field in DROPOUT.items() if flag in given}
        config = RobertaConfig.from_dict(saved, **dropout)
        head = [] if resumed else head_problems(folder, saved, model_folder.weight_names(folder))  # resumed: ours
    except ValueError as error:
        raise UsageError(f"--init_from: {error}") from None
    problems = [*head, *architecture_problems(args, given, config), *vocabulary_padding_problems(args, given, config)]
    if store.block_length > config.max_sequence_length:
        problems.append(f"it has position embeddings for {config.max_sequence_length} tokens (max_position_embeddings "
                        f"{config.max_position_embeddings}), fewer than the store's blocks of {store.block_length}")
    advice = "" if resumed else check_tokenizer(source, folder, config, store, problems)
    if problems:
        raise UsageError(f"--init_from {source}: {'; '.join(problems)}{advice or ''}")
    config.init_from = saved.get("init_from") if resumed else provenance(source, folder, saved.get("init_from"))
    return config, None if resumed else folder, {**config_arguments(config), "init_from": spelling(source, resumed)}


def spelling(source: str, resumed: Path | None = None) -> str:
    """--init_from in one spelling: a folder as its absolute path, a Hub id as it is; resumed, the spelling the
    checkpoint recorded when it names the same folder (which may be gone by now)."""
    path = Path(source).expanduser()
    recorded = read_state_args(resumed).get("init_from") if resumed else None
    if recorded and (recorded == source or Path(recorded) == path.resolve()):
        return recorded
    return str(path.resolve()) if path.is_dir() else source


def read_state_args(checkpoint: Path) -> dict:
    return read_state(checkpoint).args


def head_problems(folder: Path, saved: dict, weights: set[str]) -> list[str]:
    """An MLM head that this RoBERTa can load as it is: there, and its decoder tied to the word embeddings."""
    if not any(name.startswith("lm_head.") for name in weights):
        return ["it has no masked-LM head (no lm_head.* weights): it is not a RobertaForMaskedLM checkpoint, and "
                "continued pretraining would start from a random head"]
    decoder, embeddings = next(iter(MLM_TIED_WEIGHTS.items()))
    if saved.get("tie_word_embeddings", True) is False or not model_folder.same_tensor(folder, decoder, embeddings):
        return ["its MLM decoder is a matrix of its own, not its word embeddings (transformers' "
                "tie_word_embeddings=False): this RoBERTa ties them, as every published RoBERTa does, so one of the "
                "two would be lost; continue from a checkpoint with tied embeddings"]
    return []


def architecture_problems(args: argparse.Namespace, given: set[str], config) -> list[str]:
    """Architecture flags given on the command line that disagree with the checkpoint."""
    differ = [f"--{flag} {getattr(args, flag)} (the checkpoint's {field} is {getattr(config, field)})"
              for flag, field in ARCHITECTURE.items()
              if flag in given and getattr(args, flag) != getattr(config, field)]
    if MLP_RATIO in given and round(args.mlp_ratio * config.hidden_size) != config.intermediate_size:
        differ.append(f"--mlp_ratio {args.mlp_ratio} (the checkpoint's intermediate_size is {config.intermediate_size}"
                      f" = {config.intermediate_size / config.hidden_size:g} x hidden_size {config.hidden_size})")
    return [f"it disagrees with {'; '.join(differ)}: the architecture comes from the checkpoint; leave out these "
            "flags"] if differ else []


def vocabulary_padding_problems(args: argparse.Namespace, given: set[str], config) -> list[str]:
    """--pad_vocab_to_multiple_of cannot reshape a checkpoint's embeddings: given, it must already hold."""
    multiple = args.pad_vocab_to_multiple_of
    if "pad_vocab_to_multiple_of" not in given or config.vocab_size % multiple == 0:
        return []
    return [f"--pad_vocab_to_multiple_of {multiple} cannot be applied: the vocabulary is the checkpoint's "
            f"{config.vocab_size:,} rows, not a multiple of {multiple}; leave the flag out"]


def check_tokenizer(source: str, folder: Path, config, store, problems: list[str]) -> str:
    """The store's ids must be the checkpoint's tokens, by tokenization's one rule: the fingerprint of the
    checkpoint's tokenizer (its files, else its tokenizer record), else a vocabulary that fits its embeddings.
    A mismatch is added to `problems`; returns the advice that ends the message: the command of a store that fits
    (the checkpoint's tokenizer, blocks it has positions for)."""
    tokenizer, recorded = store.tokenizer, model_folder.recorded_tokenizer(folder)
    if not Path(source).expanduser().is_dir() or any((folder / name).is_file() for name in TOKENIZER_FILES):
        # a Hub id's tokenizer files come with the weights'
        recorded = tokenizer_identity(load_tokenizer(source, flag="--init_from"))
    elif recorded is None and is_main_process():
        print(f"warning: --init_from {source} holds no tokenizer files, so the store's tokenizer can be checked by "
              "its vocabulary size only", flush=True)
    mismatch = tokenizer_mismatch(tokenizer, recorded, config)
    if mismatch:
        problems.append(
            f"the store {store.path} was tokenized with {store.made_with} (vocabulary {len(tokenizer):,}, fingerprint "
            f"{tokenizer_fingerprint(tokenizer)}), not with its tokenizer (this one has {mismatch}; model vocabulary "
            f"{config.vocab_size:,}): its ids would be read as other tokens")
    too_long = store.block_length > config.max_sequence_length
    if not (mismatch or too_long):
        return ""
    length = min(store.block_length, config.max_sequence_length)
    return (f". Make a store with the checkpoint's tokenizer{f' and blocks of {length}' if too_long else ''}: "
            f"{fitting_prepare_command(store.command, store.path, source, length)}")


def fitting_prepare_command(command: str, store: str | Path, source: str, context_length: int) -> str:
    """The store's own prepare_data.py command with the checkpoint's tokenizer and blocks of `context_length`, into
    a new folder."""
    drop = {"--hf_model_name": 1, "--train_tokenizer": 1, "--path_to_data_store": 1, "--overwrite": 0,
            "--no-overwrite": 0, "--context_length": 1}  # flag -> how many values follow it
    words, kept, i = shlex.split(command)[2:], [], 0
    while i < len(words):
        name = words[i].split("=")[0]
        if name in drop:
            i += 1 + (0 if "=" in words[i] else drop[name])
        else:
            kept.append(words[i])
            i += 1
    new_store = str(Path(store)).rstrip("/") + "_retokenized"
    return shlex.join(["python", "prepare_data.py", *(kept or ["<your source flags>"]), "--context_length",
                       str(context_length), "--hf_model_name", source, "--path_to_data_store", new_store]
                      ).replace("'<your source flags>'", "<your source flags>")


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
