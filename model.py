"""RoBERTa, from scratch, in one file.

Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach" (https://arxiv.org/abs/1907.11692).
The architecture is BERT's (Devlin et al. 2018): learned position embeddings, a stack of post-LayerNorm
transformer encoder layers with GELU MLPs, and a masked-language-model head whose decoder is tied to the word
embeddings. RoBERTa changed the training recipe (no next-sentence prediction, dynamic masking, large batches,
more data, byte-level BPE) and one detail of the model: position ids start at `pad_token_id + 1` (= 2), so
the position table has `max_sequence_length + 2` rows (514 for 512 tokens).

Mapping to transformers' checkpoints: module and parameter names are those of transformers'
`modeling_roberta.py`, so a state dict moves between the two unchanged:

    roberta.embeddings.{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    roberta.encoder.layer.N.attention.self.{query, key, value}
    roberta.encoder.layer.N.attention.output.{dense, LayerNorm}
    roberta.encoder.layer.N.intermediate.dense
    roberta.encoder.layer.N.output.{dense, LayerNorm}
    lm_head.{dense, layer_norm, bias}  (lm_head.decoder.weight is the word embedding matrix)
    qa_outputs
    classifier.{dense, out_proj}

`from_pretrained` reads a transformers folder or Hub id into our classes; `save_pretrained` writes a folder
that transformers' own `RobertaForMaskedLM` / `RobertaForQuestionAnswering` / `RobertaForSequenceClassification`
load with nothing missing (the folder's files are model_folder.py's).

Differences from transformers, all for speed and none visible in the numbers:
  * attention is one `F.scaled_dot_product_attention` call, with no mask at all for unpadded batches so that
    the flash kernel can run, after one matrix multiply for the query, key and value projections (their
    weights concatenated in forward; the parameters stay three `Linear` modules with transformers' names);
  * with labels, the MLM head runs only on the ~15% of positions that are predicted (the vocabulary
    projection is a quarter of the FLOPs when it runs on every position); with `max_predictions_per_seq`
    (BERT's flag), on a fixed number of rows per sequence, so that torch.compile traces the whole loss into
    one graph and a training step never waits for the GPU.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

import model_folder

IGNORE_INDEX = -100  # label of positions that are not predicted, as in transformers
MLM_PROBABILITY = 0.15  # the share of tokens a masked LM predicts (BERT's and RoBERTa's): masking's default


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RobertaConfig:
    """The architecture. Defaults are roberta-base's; field names are those of transformers' `config.json`."""

    vocab_size: int = 50265  # rows of the word embedding table (and columns of the MLM decoder)
    hidden_size: int = 768  # width of the residual stream
    num_hidden_layers: int = 12  # encoder layers
    num_attention_heads: int = 12  # heads per layer; hidden_size must divide by it
    intermediate_size: int = 3072  # MLP width (4 x hidden_size in RoBERTa)
    hidden_dropout_prob: float = 0.1  # dropout on embeddings and after each residual branch
    attention_probs_dropout_prob: float = 0.1  # dropout on the attention weights
    layer_norm_eps: float = 1e-5  # RoBERTa's (BERT used 1e-12)
    initializer_range: float = 0.02  # std of the normal initialisation of weights
    max_position_embeddings: int = 514  # rows of the position table: longest sequence + pad_token_id + 1
    type_vocab_size: int = 1  # RoBERTa has one token type
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    # Not architecture: where the weights started from (train.py --init_from: id or path, revision, checksum, and the
    # earlier one's own record), so that a model folder says what it was continued from. Saved only when set.
    init_from: dict | None = None
    # Sequence classification (RobertaForSequenceClassification), with transformers' names; saved only when set.
    id2label: dict[int, str] | None = None  # class index -> name; its length is num_labels (None: 2 classes)
    label2id: dict[str, int] | None = None  # the inverse of id2label (derived from it when not given)
    # "regression" (one output, MSE), "single_label_classification" (cross-entropy) or "multi_label_classification"
    # (one sigmoid per class, BCE); None: decided by the first batch with labels, as transformers does.
    problem_type: str | None = None
    classifier_dropout: float | None = None  # dropout of the classification head; None: hidden_dropout_prob

    def __post_init__(self) -> None:
        if self.id2label is not None:  # config.json keys are strings
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if self.label2id is None:
                self.label2id = {v: k for k, v in self.id2label.items()}
        problems = []
        if self.hidden_size % self.num_attention_heads != 0:
            problems.append(
                f"hidden_size {self.hidden_size} does not divide by num_attention_heads {self.num_attention_heads} "
                f"(choose a head count that divides it, e.g. {_a_divisor(self.hidden_size)})"
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_sequence_length < 1:
            problems.append(
                f"max_position_embeddings {self.max_position_embeddings} leaves no room for tokens: RoBERTa needs "
                f"at least pad_token_id + 2 = {self.pad_token_id + 2}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            problems.append(f"pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}")
        problems += self._label_problems()
        if problems:
            raise ValueError("invalid RobertaConfig: " + "; ".join(problems))

    def _label_problems(self) -> list[str]:
        problems = []
        if self.problem_type not in (None, *PROBLEM_TYPES):
            problems.append(f"problem_type {self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if self.id2label is not None and sorted(self.id2label) != list(range(len(self.id2label))):
            problems.append(f"id2label must number its classes 0..{len(self.id2label) - 1}, got "
                            f"{sorted(self.id2label)}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            problems.append(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        return problems

    @property
    def num_labels(self) -> int:
        """Outputs of the classification head: len(id2label), else 2 (transformers' default)."""
        return len(self.id2label) if self.id2label is not None else 2

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table allows: positions start at pad_token_id + 1."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        """A transformers `config.json` dictionary (`model_type: roberta`)."""
        optional = ("init_from", "id2label", "label2id", "problem_type", "classifier_dropout")
        fields = {k: v for k, v in asdict(self).items() if not (k in optional and v is None)}
        return {"model_type": "roberta", "hidden_act": "gelu", "position_embedding_type": "absolute",
                "tie_word_embeddings": True, **fields}

    @classmethod
    def from_dict(cls, config: dict, **overrides) -> RobertaConfig:
        """Build from a transformers `config.json` dictionary; keys we do not model are ignored."""
        if config.get("model_type", "roberta") not in ("roberta", "xlm-roberta"):
            raise ValueError(f"expected a RoBERTa config (model_type 'roberta'), got {config['model_type']!r}")
        act = config.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"this implementation uses exact GELU; the config asks for hidden_act {act!r}")
        names = {f.name for f in fields(cls)}
        values = {**config, **overrides}
        if "num_labels" in overrides or "id2label" not in values and "num_labels" in values:
            # transformers' `from_pretrained(..., num_labels=3)`: that many classes, named as transformers names them
            values["id2label"], values["label2id"] = {i: f"LABEL_{i}" for i in range(values["num_labels"])}, None
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, **overrides) -> RobertaConfig:
        return cls.from_dict(model_folder.read_config(model_folder.resolve(path_or_hub_id, need_weights=False)),
                             **overrides)


PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")  # transformers' names


def _a_divisor(n: int) -> int:
    return next((h for h in (12, 8, 16, 4, 2) if n % h == 0), 1)


class ModelOutput(OrderedDict):
    """A model's outputs: a dict with attribute access (`out.loss`), holding only the fields that were computed.

    A dict, so that transformers' Trainer reads it as it reads its own outputs (`outputs["loss"]`, and every
    other value as a prediction), and built like one (accelerate rebuilds outputs as `type(out)(mapping)`). An
    OrderedDict, as transformers' outputs are, because FSDP1 rebuilds a plain dict subclass as a bare dict (losing
    `out.loss`) but an OrderedDict as `type(out)()` filled key by key.
    As in transformers, each output type declares its fields: a declared field that was not computed reads as
    None (`out.loss` without labels) and is not in the dict, while any other name raises AttributeError, so that
    a misspelling (`out.lose`) fails where it is made. A plain `ModelOutput` declares the fields it is built with.
    """

    fields: tuple[str, ...] = ()  # the declared fields of this output type

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in [name for name, value in self.items() if value is None]:
            del self[name]
        undeclared = [name for name in self if self.fields and name not in self.fields]
        if undeclared:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(undeclared)} "
                            f"(its fields: {', '.join(self.fields)})")

    def __getattr__(self, name: str):
        if name in self:
            return self[name]
        if name in type(self).fields:
            return None
        raise AttributeError(f"{type(self).__name__} has no field {name!r} "
                             f"(its fields: {', '.join(self.fields or self)})")

    def __setattr__(self, name: str, value) -> None:
        if name not in type(self).fields and name not in self:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        self[name] = value


class MaskedLMOutput(ModelOutput):
    """`RobertaForMaskedLM`'s outputs; see its `forward` for the shapes."""

    fields = ("loss", "logits", "logits_labels")


class QuestionAnsweringOutput(ModelOutput):
    """`RobertaForQuestionAnswering`'s outputs: `start_logits`, `end_logits` (B, T) and, with labels, `loss`."""

    fields = ("loss", "start_logits", "end_logits")


class SequenceClassifierOutput(ModelOutput):
    """`RobertaForSequenceClassification`'s outputs: `logits` (B, num_labels) and, with labels, `loss`."""

    fields = ("loss", "logits")


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class RobertaEmbeddings(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # RoBERTa numbers real tokens padding_idx+1, padding_idx+2, ... and gives padding the position
        # padding_idx itself, so left- and right-padded inputs get the same positions for the same tokens.
        not_pad = input_ids.ne(self.padding_idx)
        position_ids = torch.cumsum(not_pad, dim=1) * not_pad + self.padding_idx  # (B, T)
        # Every token has type 0: adding row 0 is the lookup without a (B, T) index tensor.
        token_type = self.token_type_embeddings.weight[0]
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids) + token_type
        return self.dropout(self.LayerNorm(x))  # (B, T, C)


class RobertaSelfAttention(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        # DeepSpeed ZeRO-3 gathers a module's weights only when that module itself is called: set False there,
        # and the three projections run as the three modules.
        self.fused_qkv = True

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        if self.fused_qkv:
            # The three projections as one matrix multiply, (B*T, C) x (C, 3C): one wide kernel instead of three
            # narrow ones, forward and backward. The weights stay three Linear modules, so parameter and state-dict
            # names stay transformers' (checkpoints, FSDP and optimizer state see what they always saw); the
            # concatenation copies 3C^2 weights, nothing beside the product, and torch.compile fuses it with
            # autocast's cast to bf16.
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3C, C)
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3C,)
            qkv = F.linear(x, weight, bias).view(B, T, 3, self.num_heads, C // self.num_heads)  # (B, T, 3, nh, hs)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        else:  # (B, T, C) -> (B, nh, T, hs)
            q, k, v = (proj(x).view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
                       for proj in (self.query, self.key, self.value))
        dropout_p = self.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, C)


class RobertaSelfOutput(nn.Module):
    """Projection, dropout, then the residual add and LayerNorm (post-LN, as in BERT)."""

    def __init__(self, config: RobertaConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


RobertaOutput = RobertaSelfOutput  # the MLP's output block is the same computation, named as transformers does


class RobertaAttention(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.self = RobertaSelfAttention(config)
        self.output = RobertaSelfOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, key_mask), x)


class RobertaIntermediate(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class RobertaLayer(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.attention = RobertaAttention(config)
        self.intermediate = RobertaIntermediate(config)
        self.output = RobertaOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, key_mask)
        return self.output(self.intermediate(x), x)


class RobertaEncoder(nn.Module):
    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.layer = nn.ModuleList(RobertaLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, key_mask)
        return x


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class RobertaPreTrainedModel(nn.Module):
    """Initialisation, parameter counts and transformers-format loading and saving, shared by the models."""

    architecture = "RobertaModel"  # the transformers class that reads what save_pretrained writes
    base_model_prefix = "roberta"  # where the encoder sits in the state dict of the task models
    # What FSDP should wrap as a unit (accelerate's TRANSFORMER_BASED_WRAP reads this, as for transformers'
    # models): a whole layer, never the query/key/value Linears alone, whose weights attention reads directly.
    _no_split_modules = ["RobertaLayer"]

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config

    def _init_weights(self, module: nn.Module) -> None:
        """RoBERTa's initialisation: N(0, initializer_range) weights, zero biases, LayerNorm 1/0, zero padding row."""
        std = self.config.initializer_range
        if isinstance(module, RobertaLMHead):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and not getattr(module, "tied_to_embeddings", False):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def init_weights(self) -> None:
        self.apply(self._init_weights)

    # transformers' contract for tied embeddings (accelerate's FSDP2 loading calls these).
    def get_input_embeddings(self) -> nn.Embedding:
        return self.get_submodule(self.base_model_prefix).embeddings.word_embeddings if hasattr(
            self, self.base_model_prefix) else self.embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Module | None:
        return None  # no tied output layer (RobertaForMaskedLM has one)

    def tie_weights(self) -> None:
        pass  # nothing tied (RobertaForMaskedLM ties its decoder)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (the tied decoder is the word embedding matrix); optionally without embeddings."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def _state_dict_for_saving(self) -> dict[str, torch.Tensor]:
        # The tied decoder weight is left out: safetensors refuses two names for one tensor, and transformers
        # ties `lm_head.decoder.weight` to the word embeddings again when it loads the file.
        return {k: v.contiguous() for k, v in self.state_dict().items() if k not in self._tied_keys()}

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the config and the weights in transformers' format (model_folder.write_weights)."""
        model_folder.write_weights(folder, {"architectures": [self.architecture], **self.config.to_dict()},
                                   self._state_dict_for_saving())

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, new_head: bool = False, **config_overrides):
        """Load a transformers-format folder (or Hub id) of a RoBERTa checkpoint into this class.

        `config_overrides` replace config fields (e.g. `hidden_dropout_prob=0.0`, `num_labels=3`). Weights a
        checkpoint has but this class does not (a pooler, another task's head) are ignored; missing or mis-shaped
        weights are an error, except for the task head of a class loaded from another task's checkpoint, which
        starts fresh. `new_head=True` starts the task head fresh whatever the checkpoint holds (fine-tuning a model
        already fine-tuned for other labels).
        """
        folder = model_folder.resolve(path_or_hub_id, need_weights=True)
        config = RobertaConfig.from_dict(model_folder.read_config(folder), **config_overrides)
        model = cls(config)
        state = model_folder.read_state_dict(folder)
        if new_head:
            state = {k: v for k, v in model._rename_checkpoint_keys(state).items()
                     if not any(k.startswith(model._module_name(m) + ".") for m in model._fresh_head_modules())}
        model._load_checkpoint_state(state, source=str(path_or_hub_id))
        return model

    def _load_checkpoint_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        state = self._rename_checkpoint_keys(state)
        own = self.state_dict()
        fresh = self._fresh_head_keys(own, state)
        missing = [k for k in own if k not in state and k not in fresh and k not in self._tied_keys()]
        mis_shaped = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                      for k in own if k in state and state[k].shape != own[k].shape]
        if missing or mis_shaped:
            problems = []
            if missing:
                problems.append(f"missing weights {_short_list(missing)}")
            if mis_shaped:
                problems.append(f"mis-shaped weights {_short_list(mis_shaped)}")
            raise ValueError(f"cannot load {source} into {type(self).__name__}: " + "; ".join(problems)
                             + f". Is it a complete RoBERTa checkpoint whose {model_folder.CONFIG_FILE} matches its "
                             "weights?")
        if untied := [k for k, tied_to in self._tied_keys().items() if k in state and tied_to in state
                      and not torch.equal(state[k], state[tied_to])]:
            raise ValueError(f"cannot load {source} into {type(self).__name__}: its {untied[0]} is a "
                             f"matrix of its own, not its {self._tied_keys()[untied[0]]} (transformers' "
                             "tie_word_embeddings=False); this RoBERTa ties them, as every published RoBERTa does, "
                             "so one of the two would be lost")
        with torch.no_grad():
            for key, tensor in own.items():
                if key in state and key not in self._tied_keys():  # a tied copy is the tensor it is tied to
                    tensor.copy_(state[key])
        if fresh:
            for module in self._fresh_head_modules():
                module.apply(self._init_weights)

    def _rename_checkpoint_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept checkpoints saved from a bare `RobertaModel` (no `roberta.` prefix) and legacy key names."""
        own_keys = self.state_dict().keys()
        prefix = self.base_model_prefix + "."
        wants_prefix = any(k.startswith(prefix) for k in own_keys)
        has_prefix = any(k.startswith(prefix) for k in state)
        renamed = {}
        for key, tensor in state.items():
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            if wants_prefix and not has_prefix and key.split(".")[0] in ("embeddings", "encoder"):
                key = prefix + key
            elif not wants_prefix and key.startswith(prefix):
                key = key[len(prefix):]
            renamed[key] = tensor
        if "lm_head.bias" not in renamed and "lm_head.decoder.bias" in renamed:
            renamed["lm_head.bias"] = renamed["lm_head.decoder.bias"]
        return renamed

    def _tied_keys(self) -> dict[str, str]:
        """{key: the key whose tensor it is}: weights that are one tensor under two names."""
        return {}

    def _fresh_head_keys(self, own: dict, state: dict) -> set[str]:
        """Keys of a task head that may start fresh when the checkpoint has none of them (another task's)."""
        head_keys = {k for m in self._fresh_head_modules() for k in own if k.startswith(self._module_name(m) + ".")}
        return head_keys if head_keys and not any(k in state for k in head_keys) else set()

    def _fresh_head_modules(self) -> list[nn.Module]:
        return []

    def _module_name(self, module: nn.Module) -> str:
        return next(name for name, m in self.named_modules() if m is module)


class RobertaModel(RobertaPreTrainedModel):
    """The encoder: embeddings and transformer layers, returning the last hidden states (B, T, C).

    transformers' `RobertaModel` also has a pooler (used by sentence classification); this one has none."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        self.embeddings = RobertaEmbeddings(config)
        self.encoder = RobertaEncoder(config)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if T > self.config.max_sequence_length:
            raise ValueError(
                f"sequence length {T} is longer than the position table allows ({self.config.max_sequence_length} = "
                f"max_position_embeddings {self.config.max_position_embeddings} - pad_token_id - 1); "
                f"truncate inputs or build the model with max_position_embeddings >= {T + self.config.pad_token_id + 1}"
            )
        return self.encoder(self.embeddings(input_ids), _key_mask(attention_mask))


def _key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1/0 padding mask -> (B, 1, 1, T) boolean key mask for scaled_dot_product_attention.

    None stays None: with no mask at all, PyTorch may pick the flash kernel. A row with no real token at all
    would make softmax divide by zero (NaN); such rows attend to every position instead (their outputs are
    meaningless but finite, and nothing reads them)."""
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    return keep[:, None, None, :]


class RobertaLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (its weight is the word embedding matrix) + its own bias."""

    def __init__(self, config: RobertaConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied: one matrix embeds tokens and scores them
        self.decoder.tied_to_embeddings = True  # initialised as the embeddings are (zero padding row)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(F.gelu(self.dense(x)))
        # The decoder is called as a module, not through its weight: FSDP2 (accelerate groups the embeddings and
        # the decoder in one unit) and ZeRO-3 gather a module's weights in its own forward hook; torch 2.11's FSDP2
        # leaves the embeddings sharded in the next step when a module of that unit never runs.
        return self.decoder(x) + self.bias


def _predicted_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) hidden states and (N,) labels of the N predicted positions, in row-major order (N depends on the
    data: nonzero() waits for the device)."""
    flat_labels = labels.reshape(-1)  # (B*T,)
    predicted = flat_labels.ne(IGNORE_INDEX).nonzero().squeeze(-1)  # (N,)
    rows = hidden.reshape(-1, hidden.size(-1)).index_select(0, predicted)  # (N, C)
    return rows, flat_labels.index_select(0, predicted)


def _first_predicted_rows(hidden: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B*k, C) hidden states and (B*k,) labels: per sequence its predicted positions in order, then filler
    positions (label IGNORE_INDEX) up to k. No shape depends on the data."""
    B, T, C = hidden.shape
    if k < 1:
        raise ValueError(f"max_predictions_per_seq must be at least 1, got {k}")
    k = min(k, T)
    predicted = labels.ne(IGNORE_INDEX)  # (B, T)
    if not torch.compiler.is_compiling():
        torch._assert_async(predicted.sum(dim=1).max() <= k,
                            f"a sequence has more predicted positions than max_predictions_per_seq={k}")
    # A distinct key per position, predicted ones above the others and earlier ones above later ones: topk picks
    # each sequence's predicted positions in order, then fillers, with no ties for it to break arbitrarily.
    position = torch.arange(T, device=labels.device)
    key = predicted * T + (T - 1 - position)  # (B, T)
    index = key.topk(k, dim=1).indices  # (B, k)
    flat_index = (index + T * torch.arange(B, device=labels.device)[:, None]).reshape(-1)  # (B*k,) into B*T rows
    rows = hidden.reshape(B * T, C).index_select(0, flat_index)  # (B*k, C)
    return rows, labels.reshape(-1).index_select(0, flat_index)


# The MLM decoder is the word embedding matrix (one tensor, two names), as in every published RoBERTa.
MLM_TIED_WEIGHTS = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight"}


class RobertaForMaskedLM(RobertaPreTrainedModel):
    architecture = "RobertaForMaskedLM"

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        self.roberta = RobertaModel(config)
        self.lm_head = RobertaLMHead(config, self.roberta.embeddings.word_embeddings)
        self.lm_head.apply(self._init_weights)  # the encoder initialised itself

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, max_predictions_per_seq: int | None = None) -> MaskedLMOutput:
        """Without labels: `logits` (B, T, V) for every position.

        With `labels` (B, T) (the target id where a position is predicted, IGNORE_INDEX elsewhere), the head runs
        only on predicted positions and the output holds
            loss           mean cross-entropy over the predicted positions (0, not NaN, when there are none);
            logits         (N, V), one row per gathered position;
            logits_labels  (N,), the label of each row of `logits`: IGNORE_INDEX for a filler row.
        Evaluation reads the same fields on either path: loss sum `F.cross_entropy(logits.float(), logits_labels,
        reduction="sum")`, correct `(logits.argmax(-1) == logits_labels).sum()`, count `(logits_labels !=
        IGNORE_INDEX).sum()`.

        `max_predictions_per_seq=None` (dynamic): N is the number of predicted positions, in row-major order, and
        no row is a filler. The count depends on the data: nonzero() waits for the device, and torch.compile
        breaks its graph there.
        `max_predictions_per_seq=k` (static, BERT's flag): N = B * k, for each sequence its predicted positions in
        order, then filler rows up to k. Every shape depends on (B, T, k) only, so torch.compile(fullgraph=True)
        traces the whole loss and the step never waits for the device. A sequence with more than k predicted
        positions would lose the excess: take k from `batches.max_predictions_per_seq`, which bounds what
        `batches.mask_tokens` chooses; in eager mode this is checked on the device (`torch._assert_async`, no host
        synchronisation; on a GPU a failure is a device-side assert). k above T counts as T.
        """
        hidden = self.roberta(input_ids, attention_mask)  # (B, T, C)
        if labels is None:
            return MaskedLMOutput(logits=self.lm_head(hidden))
        return self.masked_lm_loss(hidden, labels, max_predictions_per_seq)

    def masked_lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor,
                       max_predictions_per_seq: int | None) -> MaskedLMOutput:
        """The head and loss on the predicted positions of `hidden` (B, T, C): see `forward`. A method of its own
        so that `compile_regions` can compile it as one region."""
        if max_predictions_per_seq is None:
            rows, row_labels = _predicted_rows(hidden, labels)
        else:
            rows, row_labels = _first_predicted_rows(hidden, labels, max_predictions_per_seq)
        # The head's vocabulary projection (the largest matrix multiply of the model) runs on the gathered rows
        # only, ~15% of the tokens; the other positions contribute nothing to the loss.
        logits = self.lm_head(rows)  # (N, V)
        # Sum over real rows, divided by their count: the mean of the dynamic path, 0 when nothing is predicted.
        loss = F.cross_entropy(logits.float(), row_labels, ignore_index=IGNORE_INDEX, reduction="sum")
        loss = loss / row_labels.ne(IGNORE_INDEX).sum().clamp(min=1)
        return MaskedLMOutput(loss=loss, logits=logits, logits_labels=row_labels)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def tie_weights(self) -> None:
        """Make the decoder's weight the word embedding matrix again (transformers' contract). accelerate calls
        this after FSDP2 rebuilds the model from the meta device (`cpu_ram_efficient_loading`), which gives every
        parameter a new tensor: without it the decoder becomes a separate, untrained copy."""
        self.lm_head.decoder.weight = self.roberta.embeddings.word_embeddings.weight

    def _tied_keys(self) -> dict[str, str]:
        return MLM_TIED_WEIGHTS

    def _fresh_head_modules(self) -> list[nn.Module]:
        return [self.lm_head]


class RobertaForQuestionAnswering(RobertaPreTrainedModel):
    """Extractive QA: two logits per token, the scores of the answer span's start and end."""

    architecture = "RobertaForQuestionAnswering"

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        self.roberta = RobertaModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.qa_outputs.apply(self._init_weights)  # the encoder initialised itself

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None
                ) -> QuestionAnsweringOutput:
        hidden = self.roberta(input_ids, attention_mask)  # (B, T, C)
        start_logits, end_logits = self.qa_outputs(hidden).float().unbind(dim=-1)  # (B, T) each
        output = QuestionAnsweringOutput(start_logits=start_logits, end_logits=end_logits)
        if start_positions is not None and end_positions is not None:
            # As transformers: a label outside the sequence (an answer truncated away) is clamped to T and ignored.
            T = input_ids.size(1)
            start_loss = F.cross_entropy(start_logits, start_positions.reshape(-1).clamp(0, T), ignore_index=T)
            end_loss = F.cross_entropy(end_logits, end_positions.reshape(-1).clamp(0, T), ignore_index=T)
            output = QuestionAnsweringOutput(loss=(start_loss + end_loss) / 2, **output)
        return output

    def _fresh_head_modules(self) -> list[nn.Module]:
        return [self.qa_outputs]


class RobertaClassificationHead(nn.Module):
    """transformers' sentence head, on the `<s>` token: dropout, dense, tanh, dropout, out_proj. (BERT used a pooler
    on [CLS] trained by next-sentence prediction; RoBERTa has no such task, and its head learns this layer anew.)"""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden[:, 0])  # (B, C): the <s> token
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)  # (B, num_labels)


class RobertaForSequenceClassification(RobertaPreTrainedModel):
    """A label (or a number) per sequence or sequence pair: GLUE, sentiment, your own classes.

    The loss follows `config.problem_type`, as in transformers: "regression" is the mean squared error of the single
    output, "single_label_classification" cross-entropy over `num_labels` classes, "multi_label_classification" one
    binary cross-entropy per class. Left unset, the first batch with labels decides and the choice is kept in the
    config (one output: regression; integer labels: single-label; float labels: multi-label)."""

    architecture = "RobertaForSequenceClassification"

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        self.roberta = RobertaModel(config)
        self.classifier = RobertaClassificationHead(config)
        self.classifier.apply(self._init_weights)  # the encoder initialised itself

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.classifier(self.roberta(input_ids, attention_mask)).float()  # (B, num_labels)
        if labels is None:
            return SequenceClassifierOutput(logits=logits)
        return SequenceClassifierOutput(loss=self.classification_loss(logits, labels), logits=logits)

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = self.config.num_labels
        if self.config.problem_type is None:  # transformers' rule, kept in the config as transformers keeps it
            integer = labels.dtype in (torch.long, torch.int)
            self.config.problem_type = ("regression" if n == 1 else
                                        "single_label_classification" if integer else "multi_label_classification")
        if self.config.problem_type == "regression":
            labels = labels.to(logits.dtype)
            return F.mse_loss(logits.squeeze(), labels.squeeze()) if n == 1 else F.mse_loss(logits, labels)
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, n), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    def _fresh_head_modules(self) -> list[nn.Module]:
        return [self.classifier]


def compile_regions(model: nn.Module, fullgraph: bool = True, **options) -> nn.Module:
    """Regional compilation (as torchtitan does): compile each `RobertaLayer` and the masked-LM head and loss, in
    place, instead of the whole model. The layers share one compiled graph, so compilation takes about the time of
    one layer, not of the whole stack, and the state-dict names stay as they are (no `_orig_mod.` prefix).
    `fullgraph=False` lets hooks that wrappers put around a layer (FSDP's) break the graph instead of failing."""
    for module in model.modules():
        if isinstance(module, RobertaLayer):
            module.forward = torch.compile(module.forward, fullgraph=fullgraph, **options)
        if isinstance(module, RobertaForMaskedLM):
            module.masked_lm_loss = torch.compile(module.masked_lm_loss, fullgraph=fullgraph, **options)
    return model


def _short_list(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def flops_per_token(config: RobertaConfig, sequence_length: int, predicted_fraction: float = MLM_PROBABILITY) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) of RobertaForMaskedLM with sparse prediction.

    Counts the matrix multiplies: the encoder's linear layers (the fused query/key/value product is the same
    FLOPs as three), attention's QK^T and AV, and the MLM head on the predicted fraction of tokens: the useful
    work, used for model FLOP utilisation (MFU). With `max_predictions_per_seq=k` the head runs on k rows per
    sequence, filler rows included; `predicted_fraction=k / sequence_length` counts the FLOPs executed instead
    (0.7% more at sequence 512, k 77)."""
    C, L, T = config.hidden_size, config.num_hidden_layers, sequence_length
    per_layer = 2 * (4 * C * C + 2 * C * config.intermediate_size) + 2 * 2 * T * C  # linears + attention
    head = 2 * (C * C + C * config.vocab_size)
    return 3 * (L * per_layer + predicted_fraction * head)


__all__ = [
    "RobertaConfig",
    "RobertaModel",
    "RobertaForMaskedLM",
    "RobertaForQuestionAnswering",
    "RobertaForSequenceClassification",
    "ModelOutput",
    "MaskedLMOutput",
    "QuestionAnsweringOutput",
    "SequenceClassifierOutput",
    "flops_per_token",
    "compile_regions",
    "IGNORE_INDEX",
    "MLM_PROBABILITY",
]
