"""Write notebooks/roberta_walkthrough.ipynb from the cells below, and optionally execute it in place.

    python notebooks/build_walkthrough.py            # write the notebook without outputs
    python notebooks/build_walkthrough.py --execute  # write it, run it top to bottom (~4-5 min on 2 CPU cores),
                                                     # and save it with its outputs (what the repository commits)

The notebook is the source of truth for readers; this script is the source of truth for edits, so that a change
is reviewed as Python text and the committed outputs always come from one clean top-to-bottom run. The public
repository's name is set in one place, REPOSITORY below: the Colab badge and the setup cell's clone step are made from
it, and left out while it is the placeholder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat

# Set this to the public GitHub repository ("owner/name"), then run `python notebooks/build_walkthrough.py --execute`:
# the notebook's Open-in-Colab badge and the clone URL of its setup cell are both made from it.
REPOSITORY = "OWNER/REPO"
BRANCH = "main"  # the branch whose notebook the Colab badge opens
PUBLISHED = REPOSITORY != "OWNER/REPO"  # without a real repository: no badge, no clone step (no placeholder link)

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "roberta_walkthrough.ipynb"
REPO_URL = f"https://github.com/{REPOSITORY}"
COLAB_URL = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{NOTEBOOK.name}"

CELLS: list[tuple[str, str]] = []  # (kind, source), kind "md" or "code", in notebook order


def md(source: str) -> None:
    CELLS.append(("md", source.strip("\n")))


def code(source: str) -> None:
    CELLS.append(("code", source.strip("\n")))


# ----------------------------------------------------------------------------------------------------------------
# The notebook
# ----------------------------------------------------------------------------------------------------------------

BADGE = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})\n\n" \
    if PUBLISHED else ""

md(f"""
# RoBERTa from scratch, in a few minutes on a CPU

{BADGE}This notebook walks through masked-language-model pretraining as RoBERTa does it, with the code of this
repository (`model.py`, `tokenization.py`, `batches.py`, `qa.py`), and trains a tiny model to fill in blanks, on
the CPU, in a few minutes.
It runs offline: the text is the built-in demo world (`demo_world.py`, encyclopedia articles about a fictional
country), or any text file you point it at.

**Running it locally**, from a clone: `make notebook` installs what is missing (the packages of `requirements.txt`
and JupyterLab) and opens this notebook in JupyterLab; then Run → Run All Cells (close it without saving, or
`git checkout notebooks/roberta_walkthrough.ipynb` afterwards, to keep the committed outputs). To run it top to
bottom without opening it, and without touching the committed file: `jupyter nbconvert --to notebook --execute
notebooks/roberta_walkthrough.ipynb --output-dir /tmp` (the executed copy is `/tmp/roberta_walkthrough.ipynb`).

**What RoBERTa changed from BERT** (Liu et al. 2019, [arXiv:1907.11692](https://arxiv.org/abs/1907.11692)):
the architecture is BERT's; the recipe is not.

* **No next-sentence prediction.** BERT's second objective did not help. RoBERTa fills each input with
  contiguous text, crossing document boundaries (a `</s>` between documents), and trains on masked tokens only.
* **Dynamic masking.** BERT chose the masked positions once, when preparing the data. RoBERTa draws new ones
  every time a sequence is fed to the model, so the model never sees the same puzzle twice.
* **Byte-level BPE.** GPT-2's tokenizer: the alphabet is the 256 byte values, so any text encodes without an
  unknown token; 50,265 entries learned from the corpus, with no language-specific pre-processing.
* **Bigger batches, more data, longer training.** 8,000 sequences a batch, 160 GB of text, up to 500,000 steps.
* **Adam with β₂ = 0.98** (and ε = 1e-6), which the authors found more stable than 0.999 with large batches.

The notebook: (1) trains a tokenizer, (2) packs documents into training blocks, (3) masks a real sentence,
(4) builds the model and recomputes one batch by hand from its weights (embeddings, attention heads, post-LayerNorm,
the MLM head), (5) asks it to fill in blanks, (6) trains it for a few minutes, (7) asks again, and (8) fine-tunes it
to answer questions about paragraphs it has never seen, as SQuAD asks, and compares it with the same fine-tuning of a
model that was not pretrained.
""")

if PUBLISHED:  # the setup cell fetches the repository where the notebook runs alone (Colab opens it so)
    SETUP_INTRO = "# Setup. Where this notebook runs without the repository around it (Colab opens it alone), clone it;"
    CLONE_SETTINGS = (f'REPO_URL = "{REPO_URL}"  # set by REPOSITORY in notebooks/build_walkthrough.py\n'
                      'CLONE_DIR = Path(REPO_URL.rsplit("/", 1)[-1])\n')
    CLONE_IMPORT = "import subprocess\n"
    CANDIDATES = "[Path.cwd(), *Path.cwd().parents, CLONE_DIR]"
    WHERE = "here or above (the notebook lives in notebooks/), or an earlier clone"
    NO_ROOT = '''    subprocess.run(["git", "clone", "--quiet", "--depth", "1", REPO_URL, str(CLONE_DIR)], check=True)
    ROOT = CLONE_DIR.resolve()'''
else:  # a copy that names no repository runs inside a clone only
    SETUP_INTRO, CLONE_IMPORT, CLONE_SETTINGS = "# Setup. Run this notebook inside a clone of the repository;", "", ""
    CANDIDATES = "[Path.cwd(), *Path.cwd().parents]"
    WHERE = "here or above (the notebook lives in notebooks/)"
    NO_ROOT = '''    raise SystemExit("run this notebook inside a clone of the repository (its root or notebooks/)")'''

code(f'''
{SETUP_INTRO}
# install only what the notebook imports and is missing (nothing where all is present); make `import model` work.
import importlib.metadata
import importlib.util
import shlex
{CLONE_IMPORT}import sys
from pathlib import Path

{CLONE_SETTINGS}# What the notebook imports, module -> pip specification (numpy, pyarrow: qa.py's SQuAD post-processing)
# Colab has them all, perhaps with a transformers older than 5. The training scripts also need datasets, accelerate
# and wandb (requirements.txt); this notebook does not, and installing them could clash with Colab's.
REQUIREMENTS = {{"torch": "torch", "transformers": "transformers>=5", "tokenizers": "tokenizers", "numpy": "numpy",
                "pyarrow": "pyarrow", "matplotlib": "matplotlib"}}


def find_repo_root() -> Path | None:
    \"\"\"The folder holding model.py: {WHERE}.\"\"\"
    candidates = {CANDIDATES}
    return next((folder.resolve() for folder in candidates if (folder / "model.py").is_file()), None)


def missing_requirements() -> list[str]:
    \"\"\"pip specifications of what this notebook imports and cannot find (tokenization.py needs transformers 5).\"\"\"
    missing = [spec for module, spec in REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    if importlib.util.find_spec("transformers") and int(importlib.metadata.version("transformers").split(".")[0]) < 5:
        missing.append(REQUIREMENTS["transformers"])
    return missing


ROOT = find_repo_root()
if ROOT is None:
{NO_ROOT}
if missing_requirements():
    print("installing:", ", ".join(missing_requirements()))
    packages = " ".join(shlex.quote(spec) for spec in missing_requirements())  # quoted: ">=" is a shell redirection
    %pip install -q {{packages}}
else:
    print("requirements: all present")
sys.path.insert(0, str(ROOT))
''')

md("""
## Settings

Leave `TEXT_FILE = None` for the demo world, or set it to the path of any UTF-8 text file (a few MB is plenty):
blank lines separate its documents, or each line is one where it has no blank line (as
`prepare_data.py --text_files` reads it). The fill-in-the-blank questions in `PROBES` are about the demo world;
with a `TEXT_FILE`, the notebook hides a word in a few held-out sentences of your text instead.
""")

code('''
import os
import time
import warnings

import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers, in a notebook

TEXT_FILE = None  # e.g. "my_book.txt"; None: the demo world
NUM_DOCUMENTS = 2000  # articles of the demo world to use
VOCAB_SIZE = 2000  # byte-level BPE entries (RoBERTa: 50,265)
BLOCK_SIZE = 32  # tokens per training sequence, <s> and </s> included (RoBERTa: 512)
BATCH_SIZE = 16  # sequences per step (RoBERTa: 8,000)
TRAIN_STEPS = 3000  # about two and a half minutes on one CPU core
WARMUP_STEPS = 150  # linear warm-up to the peak learning rate, then linear decay to zero
LEARNING_RATE = 1e-3  # peak (roberta-base: 6e-4 with 8,000-sequence batches)
QA_MAX_LENGTH = 64  # tokens per question-answering window in section 8 (SQuAD with roberta-base: 384)
SEED = 0

# Threads: one per two cores, at most four. The matrices here are small; and on a 2-core machine busy with anything
# else, two OpenMP threads waiting on each other ran 30 times slower than one (measured on a busy 2-core VM).
torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
torch.manual_seed(SEED)
notebook_started = time.perf_counter()
''')

code('''
import demo_world
from corpora import read_text_file_documents

if TEXT_FILE:
    documents = list(read_text_file_documents(TEXT_FILE))
else:
    documents = demo_world.generate_documents(seed=SEED, num_documents=NUM_DOCUMENTS)
# Hold out every 20th document: the loss on text the model never trained on tells learning from memorising.
train_documents = [doc for i, doc in enumerate(documents) if i % 20 != 19]
heldout_documents = [doc for i, doc in enumerate(documents) if i % 20 == 19]
print(f"{len(documents):,} documents ({sum(map(len, documents)):,} characters): "
      f"{len(train_documents):,} to train on, {len(heldout_documents):,} held out. The first one:\\n")
print(documents[0])
''')

# ---------------------------------------------------------------------------------------------------------------
md("""
## 1. The tokenizer: byte-level BPE

`tokenization.train_bpe_tokenizer` trains RoBERTa's tokenizer on our text: it starts from the 256 byte values and
learns merges of frequent neighbours until the vocabulary is full. A leading space is part of a token (shown as
`Ġ`), so `" painter"` and `"painter"` are different tokens. The special tokens keep RoBERTa's ids.
""")

code('''
import tokenization

tokenizer = tokenization.train_bpe_tokenizer(train_documents, vocab_size=VOCAB_SIZE, model_max_length=BLOCK_SIZE)
print(f"vocabulary: {len(tokenizer):,} tokens")
print("special tokens:", {token: tokenizer.convert_tokens_to_ids(token) for token in tokenization.SPECIAL_TOKENS})

sentence = documents[0].split("\\n")[0]
ids = tokenizer(sentence)["input_ids"]
print(f"\\n{sentence!r}\\n-> {len(ids)} ids (with <s> and </s>):")
for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(ids), strict=True):
    print(f"{token_id:6d}  {token}")
''')

md("""
Frequent words are one token; rare names are cut into pieces. Nothing is ever unknown: text the tokenizer has
never seen falls back to smaller pieces, down to single bytes, and decodes back exactly. (Bytes outside ASCII
print as stand-in characters: `ü` is two bytes, shown as `Ã` and `¼`.)
""")

code('''
unseen = "Zürich, 2024: naïve café ☕"
unseen_ids = tokenizer(unseen, add_special_tokens=False)["input_ids"]
print(tokenizer.convert_ids_to_tokens(unseen_ids))
exact, unknown = tokenizer.decode(unseen_ids) == unseen, tokenizer.unk_token_id in unseen_ids
print(f"round trip exact: {exact} | <unk> used: {unknown}")
''')

# ---------------------------------------------------------------------------------------------------------------
md("""
## 2. Packing: full blocks, no sentence pairs

Without next-sentence prediction there is no need for sentence pairs. As `prepare_data.py` does, the documents
are tokenized into one stream with a `</s>` between consecutive documents, and the stream is cut into blocks of
`BLOCK_SIZE - 2` tokens, each framed as `<s> ... </s>`. No padding anywhere: every position is a real token.
""")

code('''
def pack(texts: list[str], block_size: int) -> torch.Tensor:
    """Documents -> (N, block_size) ids: `<s> piece </s>` rows cut from `doc1 </s> doc2 </s> ...`."""
    stream = []
    for i, doc_ids in enumerate(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]):
        stream += ([tokenizer.sep_token_id] if i else []) + doc_ids
    body = block_size - 2
    pieces = torch.tensor(stream[: len(stream) // body * body]).view(-1, body)  # (N, block_size - 2)
    start = torch.full((len(pieces), 1), tokenizer.cls_token_id)  # <s>
    end = torch.full((len(pieces), 1), tokenizer.sep_token_id)  # </s>
    return torch.cat([start, pieces, end], dim=1)  # (N, block_size)


train_blocks, heldout_blocks = pack(train_documents, BLOCK_SIZE), pack(heldout_documents, BLOCK_SIZE)
print(f"train: {tuple(train_blocks.shape)} ({train_blocks.numel():,} tokens), held out: {tuple(heldout_blocks.shape)}")
print("\\nblock 1:", repr(tokenizer.decode(train_blocks[1])))
''')

# ---------------------------------------------------------------------------------------------------------------
md("""
## 3. Masking, shown on a real sentence

`batches.mask_tokens` chooses 15% of the ordinary tokens of each row (special tokens never), counted per row as
the paper's own code (fairseq) counts them: of n ordinary tokens, ⌊0.15·n⌋ positions, plus one more with
probability 0.15·n − ⌊0.15·n⌋, so that the average is exactly 15% (transformers' collator flips a 15% coin per
token instead: the same on average, with a count that varies more from row to row). A fixed count also gives
each row at most a known number of predictions, which lets the model's MLM head run on a static shape. A chosen
token is replaced by `<mask>` 80% of the time, by a random token 10% of the time, and left as it is 10% of the
time, so that the model cannot learn that only `<mask>` positions matter. The labels hold the original ids at
the chosen positions and -100 (ignored by the loss) everywhere else.
""")

code('''
import batches

example = tokenizer(documents[0], truncation=True, max_length=48, return_tensors="pt")["input_ids"]  # (1, 48)
generator = torch.Generator().manual_seed(SEED)
inputs, labels = batches.mask_tokens(example, tokenizer, mlm_probability=0.15, generator=generator)

tokens = tokenizer.convert_ids_to_tokens(example[0])
print(f"{'position':>8}  {'original':<14} {'model input':<14} {'label':>6}  what happened")
for position in (labels[0] != -100).nonzero().flatten().tolist():
    original, given = example[0, position].item(), inputs[0, position].item()
    happened = "masked" if given == tokenizer.mask_token_id else "kept" if given == original else "random token"
    print(f"{position:>8}  {tokens[position]:<14} {tokenizer.convert_ids_to_tokens(given):<14} "
          f"{labels[0, position].item():>6}  {happened}")
print("\\nmodel input:", tokenizer.decode(inputs[0]))
''')

md("""
**Dynamic masking**: every call draws new positions. The training loop below masks each batch as it is drawn,
so a block seen ten times is ten different exercises (BERT made 10 static copies of its data instead).
""")

code('''
for draw in range(3):
    inputs, labels = batches.mask_tokens(example, tokenizer, generator=generator)
    print(f"draw {draw}: positions {(labels[0] != -100).nonzero().flatten().tolist()}")

# Over many tokens, the recipe's proportions appear.
inputs, labels = batches.mask_tokens(train_blocks, tokenizer, generator=generator)
chosen = labels != -100
ordinary = ~torch.isin(train_blocks, torch.tensor(tokenizer.all_special_ids))
print(f"\\nchosen: {chosen.sum() / ordinary.sum():.1%} of ordinary tokens; of those "
      f"{(inputs[chosen] == tokenizer.mask_token_id).float().mean():.1%} <mask>, "
      f"{(inputs[chosen] == train_blocks[chosen]).float().mean():.1%} unchanged, the rest random")
''')

# ---------------------------------------------------------------------------------------------------------------
md("""
## 4. The model

`model.py` is BERT's encoder with RoBERTa's conventions: token and position embeddings, a stack of post-LayerNorm
transformer layers, and a masked-language-model head whose output matrix is the word-embedding matrix (tied). Ours
is tiny: 4 layers of width 128 with 4 attention heads (roberta-base: 12 layers of width 768, 12 heads).

Two details that trip people up when pretraining RoBERTa from scratch:

* **The position offset.** RoBERTa numbers positions from `pad_token_id + 1 = 2`, not 0 (a quirk inherited from
  fairseq: position 1 is the padding's). A model for inputs of 64 tokens needs a position table of `64 + 2 = 66`
  rows; a table of 64 rows is the classic "index out of range". Ours is sized for the 64-token windows of the
  question-answering part (section 8); pretraining on 32-token blocks uses its first rows only, and fine-tuning
  learns the others. (BERT, too, learned its later positions late: 90% of its steps at 128 tokens, the last 10%
  at 512.)
* **One token type.** BERT added a "segment" embedding, A or B, for its sentence pairs. RoBERTa has no sentence
  pairs, so `type_vocab_size` is 1: a single row, added to every token. It stays in the model only so that the
  checkpoint's names and shapes match BERT's.
""")

code('''
from model import RobertaConfig, RobertaForMaskedLM

config = RobertaConfig(
    vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
    max_position_embeddings=QA_MAX_LENGTH + 2,  # positions start at pad_token_id + 1 = 2
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # a tiny model trained for minutes does not overfit
)
model = RobertaForMaskedLM(config)
print(f"ours:         {model.num_parameters():>11,} parameters, "
      f"{model.num_parameters(exclude_embeddings=True):>10,} without the embeddings")
with torch.device("meta"):  # shapes only, no memory: the real size of roberta-base
    base = RobertaForMaskedLM(RobertaConfig())
print(f"roberta-base: {base.num_parameters():>11,} parameters, "
      f"{base.num_parameters(exclude_embeddings=True):>10,} without the embeddings")
print(f"longest input: {config.max_sequence_length} tokens (max_position_embeddings {config.max_position_embeddings})")
token_types = model.roberta.embeddings.token_type_embeddings.weight
print(f"token types: type_vocab_size {config.type_vocab_size}, table {tuple(token_types.shape)}")
''')

md("""
### One batch through the model, then again by hand

Three blocks go through the model, with forward hooks keeping what each stage receives and returns (B = batch,
T = tokens, C = width, V = vocabulary). The cells after it recompute each stage from the model's own weights,
with plain tensor operations, and check that the results agree: the printed differences are rounding errors.
""")

code('''
import math

import torch.nn.functional as F

layer0 = model.roberta.encoder.layer[0]
stages = {"embeddings": model.roberta.embeddings, "layer 0: self-attention": layer0.attention.self,
          "layer 0: attention block": layer0.attention, "layer 0: MLP, inner": layer0.intermediate,
          "layer 0": layer0, f"encoder ({config.num_hidden_layers} layers)": model.roberta.encoder,
          "MLM head": model.lm_head}
seen = {}  # stage -> (its first input, its output), from the forward hooks


def keep(name):
    def hook(module, args, output):
        seen[name] = (args[0], output)
    return hook


hooks = [module.register_forward_hook(keep(name)) for name, module in stages.items()]
inputs, labels = batches.mask_tokens(train_blocks[:3], tokenizer, generator=generator)
with torch.no_grad():
    output = model(inputs, labels=labels)
for hook in hooks:
    hook.remove()
print(f"input ids {tuple(inputs.shape)}")
for name in stages:
    print(f"  {name:<26} -> {tuple(seen[name][1].shape)}")
print(f"loss {output.loss.item():.2f}; a uniform guess scores ln {len(tokenizer)} = {math.log(len(tokenizer)):.2f}")


def linear(x, layer):  # what nn.Linear computes
    return x @ layer.weight.T + layer.bias


def layer_norm(x, norm):  # what nn.LayerNorm computes: each token's C features to mean 0, variance 1, then scaled
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def gelu(x):  # exact GELU, x·Φ(x) with Φ the standard normal CDF (model.py's F.gelu; not the tanh approximation)
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def max_difference(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
''')

md("""
**Embeddings.** Each token's vector is its word embedding + the embedding of its position + the one token type,
then LayerNorm. Positions start at 2 (the offset above).
""")

code('''
emb = model.roberta.embeddings
B, T = inputs.shape
positions = torch.arange(T) + config.pad_token_id + 1  # 2, 3, ..., T + 1
x = emb.word_embeddings.weight[inputs] + emb.position_embeddings.weight[positions] + emb.token_type_embeddings.weight[0]
by_hand = layer_norm(x, emb.LayerNorm)  # (B, T, C)
print(f"position ids: {positions[:4].tolist()} ... {positions[-1].item()}")
print(f"embeddings by hand vs the model's: max difference {max_difference(by_hand, seen['embeddings'][1]):.1e}")
assert torch.allclose(by_hand, seen["embeddings"][1], atol=1e-5)
''')

md("""
**Self-attention, with heads.** Three linear maps of the input give each token a query, a key and a value. The
C = 128 features are split into `num_attention_heads` = 4 heads of `hs` = 32 features, and each head attends on
its own: token i's output is the average of the values of all tokens j, weighted by softmax over j of
q<sub>i</sub>·k<sub>j</sub> / √hs (the √hs keeps the scores' scale independent of the head size). The heads'
outputs are laid side by side again. `model.py` does this in `RobertaSelfAttention` with one call to PyTorch's
`scaled_dot_product_attention`; here it is spelled out, with the layer's own weights.
""")

code('''
x, model_attention = seen["layer 0: self-attention"]  # (B, T, C) in, (B, T, C) out
attention = layer0.attention.self
nh = config.num_attention_heads
hs = config.hidden_size // nh  # features per head


def split_heads(t):  # (B, T, C) -> (B, nh, T, hs): head h gets features h*hs ... (h+1)*hs - 1
    return t.view(B, T, nh, hs).transpose(1, 2)


q, k, v = (split_heads(linear(x, proj)) for proj in (attention.query, attention.key, attention.value))
weights = (q @ k.transpose(-2, -1) / math.sqrt(hs)).softmax(dim=-1)  # (B, nh, T, T), each row sums to 1
by_hand = (weights @ v).transpose(1, 2).reshape(B, T, config.hidden_size)  # (B, nh, T, hs) -> (B, T, C)
print(f"q, k, v {tuple(q.shape)} (B, nh, T, hs); attention weights {tuple(weights.shape)}")
print(f"self-attention by hand vs the model's: max difference {max_difference(by_hand, model_attention):.1e}")
assert torch.allclose(by_hand, model_attention, atol=1e-5)
print(f"untrained, token 5 spreads its attention evenly: weights from {weights[0, 0, 5].min():.4f} to "
      f"{weights[0, 0, 5].max():.4f} (uniform: 1/T = {1 / T:.4f})")
''')

md("""
**Post-LayerNorm, and why it needs warm-up.** Each of the layer's two sub-blocks (attention, then the MLP) adds its
output to its input and normalises the sum: `LayerNorm(x + sublayer(x))`, BERT's "post-LN" arrangement, which
RoBERTa keeps. The MLP widens each token to 512 features, applies GELU, and projects back to 128. Xiong et al.
2020, ["On Layer Normalization in the Transformer Architecture"](https://arxiv.org/abs/2002.04745), show that at
initialisation a post-LN transformer's gradients are large for the parameters near the output, so that training at
the full learning rate from the first step is unstable; a learning rate that warms up from zero over the first
steps avoids that (roberta-base: 24,000 of 500,000 steps; here 150 of 3,000). Pre-LN transformers
(`x + sublayer(LayerNorm(x))`, GPT-2 onwards) train without warm-up in their experiments.
""")

code('''
x, model_layer = seen["layer 0"]
h = layer_norm(x + linear(model_attention, layer0.attention.output.dense), layer0.attention.output.LayerNorm)
mlp = linear(gelu(linear(h, layer0.intermediate.dense)), layer0.output.dense)  # C -> 4C -> GELU -> C
by_hand = layer_norm(h + mlp, layer0.output.LayerNorm)  # post-LN: normalise after the residual add
print(f"layer 0 by hand vs the model's: max difference {max_difference(by_hand, model_layer):.1e}")
assert torch.allclose(by_hand, model_layer, atol=1e-5)

z = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
tanh_gelu = F.gelu(z, approximate="tanh")
print("z       " + " ".join(f"{value:7.3f}" for value in z))
print("GELU(z) " + " ".join(f"{value:7.4f}" for value in gelu(z))
      + f"   (tanh approximation differs by up to {(gelu(z) - tanh_gelu).abs().max():.1e})")
''')

md("""
**The MLM head** turns each hidden vector back into a score per vocabulary entry: dense → GELU → LayerNorm, then the
decoder, whose weight *is* the word-embedding matrix (tied: the same 2,000 × 128 tensor embeds tokens at the input
and scores them at the output), plus a bias. With `labels`, `model.py` runs it only on the masked positions: the
loss reads nothing else, and the decoder is the model's largest matrix product (roberta-base: 768 × 50,265 per
token).
""")

code('''
head = model.lm_head
hidden = seen[f"encoder ({config.num_hidden_layers} layers)"][1]  # (B, T, C)
predicted = labels != -100  # (B, T): the masked positions
selected = hidden[predicted]  # (N, C)
word_embeddings = model.roberta.embeddings.word_embeddings.weight  # (V, C)
logits = layer_norm(gelu(linear(selected, head.dense)), head.layer_norm) @ word_embeddings.T + head.bias  # (N, V)
loss = F.cross_entropy(logits, labels[predicted])
print(f"decoder weight is the word-embedding matrix: {head.decoder.weight is word_embeddings}")
print(f"hidden {tuple(hidden.shape)} -> the {predicted.sum().item()} masked positions {tuple(selected.shape)} "
      f"-> logits {tuple(logits.shape)}")
print(f"loss by hand {loss.item():.6f}, the model's {output.loss.item():.6f}")
assert torch.isclose(loss, output.loss, atol=1e-5)
''')

# ---------------------------------------------------------------------------------------------------------------
md("""
## 5. Fill in the blank, before training

Sentences in the style of the demo world's articles (names made up in its manner), with one word hidden. The
world makes each answer predictable: its articles follow a few patterns, a work called "Treatise on ..." is a
treatise, a first name tells a woman from a man by its ending (Kelara, Lamric), and the last sentence names the
occupation before the blank. The untrained model has no idea yet: its guesses are noise, each at about 1/2000.
""")

code('''
import random
import re

PROBES = [  # (sentence, the word to hide): each hidden word is one token of the vocabulary
    ("Graelle Memont (born 1805, died 1873) was a mathematician.", " died"),
    ("Kelara Celley was an engineer. She was born in the town of Kiasounford.", " born"),
    ("Borine Huxson was a poet. She studied at the Mugendmere University.", " studied"),
    ("Kelara Celley was an engineer. She was born in the town of Kiasounford.", " She"),
    ("Lamric Tesidard was a painter. He was born in the town of Kiasounford.", " He"),
    ("In 1849 she completed Treatise on Numbers, her most celebrated treatise.", " treatise"),
    ("Tethgard is a city of Stoliamia; the river Zogreos flows through it.", " river"),
    ("Lamric Tesidard was a painter. His teacher was the painter Texine Dernmont.", " painter"),
]


def probes_from_text(texts: list[str], count: int = 8) -> list[tuple[str, str]]:
    """Questions for any text: short sentences of `texts`, each with a whole word that is one token to hide."""
    rng = random.Random(SEED)
    sentences = [s for text in texts for s in re.split(r"(?<=[.!?])\\s+", text) if 8 <= len(s.split()) <= 20]
    probes = []
    for sentence in rng.sample(sentences, len(sentences)):
        words = [w for w in re.findall(r"(?<= )[A-Za-z]{4,}\\b", sentence)
                 if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
        if words and len(tokenizer(sentence)["input_ids"]) <= BLOCK_SIZE:
            probes.append((sentence, " " + rng.choice(words)))
        if len(probes) == count:
            break
    return probes


if TEXT_FILE:  # the questions above are about the demo world: ask about held-out sentences of your text instead
    PROBES = probes_from_text(heldout_documents)


def hide(sentence: str, word: str) -> tuple[torch.Tensor, int]:
    """The sentence's ids with the last occurrence of `word` (one token) replaced by <mask>, and its position."""
    ids = tokenizer(sentence, return_tensors="pt")["input_ids"]  # (1, T)
    word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(word_ids) != 1:
        raise ValueError(f"{word!r} is {len(word_ids)} tokens in this vocabulary: hide a word that is one token")
    word_id = word_ids[0]
    position = (ids[0] == word_id).nonzero().max().item()
    ids[0, position] = tokenizer.mask_token_id
    return ids, position


@torch.no_grad()
def fill_in(model, k: int = 5) -> list[list[tuple[str, float]]]:
    """The model's top-k guesses (token, probability) for the hidden word of each probe."""
    model.eval()
    guesses = []
    for sentence, word in PROBES:
        ids, position = hide(sentence, word)
        top = model(ids).logits[0, position].softmax(-1).topk(k)
        pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
        guesses.append([(tokenizer.decode(token_id).strip(), p) for token_id, p in pairs])
    model.train()
    return guesses


def show(guesses: list[list[tuple[str, float]]]) -> None:
    for (sentence, word), top in zip(PROBES, guesses, strict=True):
        head, tail = re.fullmatch(rf"(.*){re.escape(word)}\\b(.*)", sentence, re.DOTALL).groups()  # last occurrence
        print(f"{head} <mask>{tail}\\n    answer {word.strip()!r}; guesses: "
              + ", ".join(f"{token!r} {p:.3f}" for token, p in top))


before = fill_in(model)
show(before)
''')

# ---------------------------------------------------------------------------------------------------------------
md("""
## 6. Training: a plain PyTorch loop

What `train.py` does at scale, in a dozen lines: random batches of blocks, masked afresh each step (dynamic
masking), AdamW with RoBERTa's β = (0.9, 0.98) and ε = 1e-6, weight decay 0.01 on matrices only (biases and
LayerNorm gains are 1-D and not decayed), gradient clipping at 1.0, and a learning rate that warms up linearly (the
post-LN warm-up of section 4) and then decays linearly to zero. The held-out loss is measured with the same masks
every time, so its values compare.
""")

code('''
def make_optimizer(model, lr: float) -> torch.optim.AdamW:
    """AdamW as RoBERTa: betas (0.9, 0.98), eps 1e-6, weight decay 0.01 on tensors of rank >= 2 only."""
    decay = [p for p in model.parameters() if p.ndim >= 2]  # weight matrices and embeddings
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # biases, LayerNorm gains and shifts
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def warmup_then_linear_decay(warmup_steps: int, total_steps: int):
    """Learning-rate multiplier of a step: 0 -> 1 over `warmup_steps`, then 1 -> 0 at `total_steps`."""
    return lambda step: min((step + 1) / warmup_steps, max(0.0, (total_steps - step) / (total_steps - warmup_steps)))


@torch.no_grad()
def heldout_loss(model) -> float:
    """MLM loss on the held-out blocks, with the same masks at every call (a freshly seeded generator)."""
    model.eval()
    inputs, labels = batches.mask_tokens(heldout_blocks, tokenizer, generator=torch.Generator().manual_seed(1234))
    loss = model(inputs, labels=labels).loss.item()
    model.train()
    return loss
''')

code('''
optimizer = make_optimizer(model, LEARNING_RATE)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(WARMUP_STEPS, TRAIN_STEPS))
generator = torch.Generator().manual_seed(SEED)
train_losses, evaluations = [], [(0, heldout_loss(model))]
model.train()
started = time.perf_counter()
for step in range(1, TRAIN_STEPS + 1):
    batch = train_blocks[torch.randint(len(train_blocks), (BATCH_SIZE,), generator=generator)]  # (B, T)
    inputs, labels = batches.mask_tokens(batch, tokenizer, generator=generator)  # new masks every step
    loss = model(inputs, labels=labels).loss  # no attention mask: packed blocks have no padding
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    train_losses.append(loss.item())
    if step % 200 == 0 or step == TRAIN_STEPS:
        evaluations.append((step, heldout_loss(model)))
        print(f"step {step:5d} | train loss {sum(train_losses[-200:]) / len(train_losses[-200:]):.3f} | "
              f"held-out loss {evaluations[-1][1]:.3f} | lr {scheduler.get_last_lr()[0]:.2e}")
training_seconds = time.perf_counter() - started
print(f"{TRAIN_STEPS} steps, {TRAIN_STEPS * BATCH_SIZE * BLOCK_SIZE:,} tokens, in {training_seconds:.0f} s")
''')

md("""
The dashed line below is the loss of a guess that ignores the context: each masked token predicted with its
frequency in the training blocks.
""")

code('''
import matplotlib.pyplot as plt

special_ids = torch.tensor(tokenizer.all_special_ids)
counts = torch.bincount(train_blocks.flatten(), minlength=len(tokenizer)).float()
counts[special_ids] = 0  # special tokens are never masked, so never predicted
frequencies = (counts + 1) / (counts + 1).sum()  # + 1: a token unseen in training keeps some probability
heldout_ordinary = heldout_blocks[~torch.isin(heldout_blocks, special_ids)]
context_free_loss = -frequencies[heldout_ordinary].log().mean().item()
most_frequent = [tokenizer.decode(token_id) for token_id in counts.topk(5).indices.tolist()]
print(f"context-free guess: held-out loss {context_free_loss:.2f}; the most frequent tokens: {most_frequent}")

smooth = [sum(train_losses[max(0, i - 49) : i + 1]) / len(train_losses[max(0, i - 49) : i + 1])
          for i in range(len(train_losses))]
fig, ax = plt.subplots(figsize=(7, 3.5), dpi=80)
ax.plot(range(1, len(train_losses) + 1), train_losses, color="tab:blue", alpha=0.25, linewidth=0.8,
        label="train loss (each step)")
ax.plot(range(1, len(smooth) + 1), smooth, color="tab:blue", label="train loss (mean of 50 steps)")
ax.plot(*zip(*evaluations, strict=True), "o-", color="tab:orange", label="held-out loss")
ax.axhline(context_free_loss, color="gray", linestyle="--", label="context-free guess (token frequencies)")
ax.set_xlabel("step")
ax.set_ylabel("MLM loss (nats)")
ax.set_title("Pretraining a 4-layer RoBERTa on the CPU")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
''')

md("""
**The plateau.** In its first 200 steps the model falls from ln 2000 ≈ 7.6 to the dashed line: it has learned
which tokens are frequent and predicts them wherever the mask is, whatever surrounds it. For the next thousand
steps or so it gets only slowly below that line, until it learns to use the context and the loss falls faster.
Small masked language models are known to stall on this plateau. What gets this one past it within a few CPU
minutes: short blocks (32 tokens) in small batches (16), so that many updates fit in the budget, no dropout, and a
high peak learning rate (1e-3). Measured while writing this notebook: blocks of 64 tokens in batches of 8, the same
tokens per update, were still on the plateau after 3,000 updates (held-out loss 5.1). `make demo`, which trains
longer, uses blocks of 64 in batches of 16.
""")

# ---------------------------------------------------------------------------------------------------------------
md("""
## 7. Fill in the blank, after training

The same sentences. A few minutes on 1.5 million tokens (roberta-base trained on about 2 trillion: 500,000 steps
of 8,000 sequences of 512 tokens) teach the model the patterns of the world's articles, the word each one calls
for. Harder skills take longer: telling She from He by the ending of a first name it has never seen, or copying
the occupation named earlier in the sentence (it knows that an occupation goes there, not yet which one).
`make demo` trains longer.
""")

code('''
after = fill_in(model)
show(after)
''')

code('''
def top1_right(guesses) -> int:
    return sum(top[0][0] == word.strip() for (_, word), top in zip(PROBES, guesses, strict=True))


def in_top5(guesses) -> int:
    return sum(word.strip() in [t for t, _ in top] for (_, word), top in zip(PROBES, guesses, strict=True))


initial_loss, final_loss = evaluations[0][1], evaluations[-1][1]
print(f"held-out MLM loss: {initial_loss:.3f} before training, {final_loss:.3f} after")
n = len(PROBES)
print(f"probes answered right (top-1): {top1_right(before)}/{n} before, {top1_right(after)}/{n} after")
print(f"probes with the answer in the top 5: {in_top5(before)}/{n} before, {in_top5(after)}/{n} after")
''')

# ---------------------------------------------------------------------------------------------------------------
md("""
## 8. Question answering, as SQuAD asks it

Fine-tuning is the other half of the project. SQuAD (Rajpurkar et al. 2016,
[arXiv:1606.05250](https://arxiv.org/abs/1606.05250)) asks 100,000 questions about Wikipedia paragraphs, and each
answer is a span of its paragraph: the model does not write an answer, it points at one.
`RobertaForQuestionAnswering` is the encoder plus one linear layer that gives every token two scores, a **start
logit** and an **end logit**; training is cross-entropy of the start logits against the answer's first token and
of the end logits against its last. A prediction is scored by **exact match** (its text equals a gold answer, after
lower-casing and dropping punctuation and a/an/the) and **F1** (the overlap of their words), in percent.

The demo world has such questions: `demo_world.generate_squad` writes them in SQuAD's JSON layout, about the world's
articles in other wordings than the pretraining text, and its `validation` split asks about people, towns and
institutions that the `train` split never mentions. (With a `TEXT_FILE`, the model pretrained on your text is
fine-tuned on these questions all the same.)
""")

code('''
import numpy as np

import qa
from model import RobertaForQuestionAnswering

qa_started = time.perf_counter()
QA_DOC_STRIDE = 24  # tokens shared by consecutive windows of a long context (roberta-base on SQuAD: 128)
QA_TRAIN_STEPS = 400  # batches of fine-tuning: about 40 seconds
QA_BATCH_SIZE = 16  # windows per batch
QA_LEARNING_RATE = 6e-4  # peak; a tiny model fine-tunes fast (roberta-base on SQuAD: 3e-5)


def squad_rows(squad: dict) -> list[dict]:
    """SQuAD's nested JSON (data[].paragraphs[].qas[]) -> one row per question, as finetune_roberta_qa.py reads it."""
    return [{"id": item["id"], "question": item["question"], "context": paragraph["context"],
             "answers": {"text": [a["text"] for a in item["answers"]],
                         "answer_start": [a["answer_start"] for a in item["answers"]]}}
            for article in squad["data"] for paragraph in article["paragraphs"] for item in paragraph["qas"]]


def columns(rows: list[dict]) -> dict[str, list]:
    """Rows -> columns: the batch layout qa.py's functions take (that of a datasets.map batch)."""
    return {key: [row[key] for row in rows] for key in rows[0]}


qa_train = squad_rows(demo_world.generate_squad(seed=SEED, split="train"))
validation_squad = demo_world.generate_squad(seed=SEED, split="validation")  # SQuAD's JSON layout
qa_validation = squad_rows(validation_squad)
print(f"{len(qa_train):,} training questions, {len(qa_validation):,} held-out questions. One of them:\\n")
example = qa_validation[0]
answer_start = example["answers"]["answer_start"][0]
print(f"context:  {example['context']}\\nquestion: {example['question']}\\n"
      f"answer:   {example['answers']['text'][0]!r}, from character {answer_start} of the context")
''')

md("""
### Windows: `max_length` and `doc_stride`

The model reads at most **`max_length`** tokens at once (here `QA_MAX_LENGTH` = 64, which the position table was
sized for; roberta-base on SQuAD: 384). Each input is a **window** `<s> question </s></s> piece of the context
</s>`, padded to `max_length`. A context too long for one window is cut into several, and consecutive windows share
**`doc_stride`** tokens (here 24; on SQuAD 128), so that an answer cut by one window's edge is whole in the next.
In training, a window that does not hold the whole answer is labelled with start = end = 0, the `<s>` token: "not
in this window". At prediction, the best span over all the windows of a question wins.
`qa.prepare_qa_eval_features` cuts the windows; the longest held-out context:
""")

code('''
long_one = max(qa_validation, key=lambda row: len(row["context"]))
windows = qa.prepare_qa_eval_features(columns([long_one]), tokenizer, max_length=QA_MAX_LENGTH,
                                         doc_stride=QA_DOC_STRIDE)
context_tokens = len(tokenizer(long_one["context"], add_special_tokens=False, verbose=False)["input_ids"])
print(f"question: {long_one['question']}\\n{context_tokens} context tokens -> {len(windows['input_ids'])} windows of "
      f"{QA_MAX_LENGTH} tokens. The last one, in full:")
last_window = windows["input_ids"][-1]
print(tokenizer.decode(last_window).replace("<pad>", ""), f"+ {last_window.count(tokenizer.pad_token_id)} <pad>\\n")
previous_end = None  # the character where the previous window's context ends
for i, offsets in enumerate(windows["offset_mapping"]):
    spans = [span for span in offsets if span is not None]  # (start, end) characters of each context token
    text = long_one["context"][spans[0][0] : spans[-1][1]]
    shared = "" if i == 0 else f", {sum(start < previous_end for start, _ in spans)} shared with the previous"
    print(f"window {i}: {len(spans)} context tokens{shared}: {text[:36]!r}...")
    previous_end = spans[-1][1]
''')

md("""
### Fine-tuning, the same loop again

The pretrained encoder's weights are copied into a `RobertaForQuestionAnswering`, whose two-score head starts at
random. `qa.prepare_qa_train_features` cuts the training windows and labels each with its answer's first and
last token, found through the tokenizer's character offsets. Then the loop of section 6 on batches of windows, with
the attention mask, since windows are padded. For the held-out questions, `qa.postprocess_qa_predictions` turns
each question's windows' start and end logits into one answer (shown below), and `qa.compute_squad_metrics`
scores the answers as SQuAD's official script does.
""")

code('''
train_features = qa.prepare_qa_train_features(columns(qa_train), tokenizer, QA_MAX_LENGTH, QA_DOC_STRIDE)
train_windows = {key: torch.tensor(train_features[key])  # (windows, QA_MAX_LENGTH), or (windows,) for the labels
                 for key in ("input_ids", "attention_mask", "start_positions", "end_positions")}
validation_features = qa.prepare_qa_eval_features(columns(qa_validation), tokenizer, QA_MAX_LENGTH, QA_DOC_STRIDE)
print(f"{len(qa_train):,} training questions -> {len(train_windows['input_ids']):,} windows, "
      f"{(train_windows['start_positions'] == 0).float().mean():.0%} of them without their answer; "
      f"{len(qa_validation):,} held-out questions -> {len(validation_features['input_ids']):,} windows")


def finetune_qa(qa_model) -> list[float]:
    """QA_TRAIN_STEPS random batches of training windows, with pretraining's optimizer and schedule; the losses."""
    optimizer = make_optimizer(qa_model, QA_LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_linear_decay(max(1, QA_TRAIN_STEPS // 10), QA_TRAIN_STEPS))
    generator = torch.Generator().manual_seed(SEED)
    qa_model.train()
    losses = []
    for _ in range(QA_TRAIN_STEPS):
        rows = torch.randint(len(train_windows["input_ids"]), (QA_BATCH_SIZE,), generator=generator)
        loss = qa_model(**{key: values[rows] for key, values in train_windows.items()}).loss  # start and end CE
        loss.backward()
        torch.nn.utils.clip_grad_norm_(qa_model.parameters(), max_norm=1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@torch.no_grad()
def qa_logits(qa_model, features: dict) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits of every window of `features`, (windows, QA_MAX_LENGTH) each."""
    qa_model.eval()
    input_ids, attention_mask = torch.tensor(features["input_ids"]), torch.tensor(features["attention_mask"])
    outputs = [qa_model(input_ids[i : i + 256], attention_mask=attention_mask[i : i + 256])
               for i in range(0, len(input_ids), 256)]
    return (torch.cat([o.start_logits for o in outputs]).numpy(), torch.cat([o.end_logits for o in outputs]).numpy())


def evaluate_qa(qa_model) -> dict[str, float]:
    """Exact match and F1 on the held-out questions: each question's best span over its windows vs its gold answer."""
    logits = qa_logits(qa_model, validation_features)
    answers = qa.postprocess_qa_predictions(columns(qa_validation), validation_features, logits)
    return qa.compute_squad_metrics(answers, {row["id"]: row["answers"]["text"] for row in qa_validation})
''')

code('''
torch.manual_seed(SEED)  # the same QA head as the comparison below starts with
qa_model = RobertaForQuestionAnswering(config)
qa_model.roberta.load_state_dict(model.roberta.state_dict())  # the pretrained encoder; the QA head starts at random
started = time.perf_counter()
qa_losses = finetune_qa(qa_model)
pretrained_scores = evaluate_qa(qa_model)
print(f"{QA_TRAIN_STEPS} steps in {time.perf_counter() - started:.0f} s, loss {np.mean(qa_losses[:20]):.2f} "
      f"-> {np.mean(qa_losses[-20:]):.2f}")
print(f"held-out questions: exact match {pretrained_scores['exact_match']:.1f}, F1 {pretrained_scores['f1']:.1f}")
''')

md("""
### From logits to an answer

For one held-out question: the tokens with the highest start and end logits, and the span that
`qa.postprocess_qa_predictions` picks. It tries the 20 highest starts and 20 highest ends of each window, keeps
the pairs whose start is not after their end, lies in the context (not in the question, nor padding) and spans at
most 30 tokens, and returns the pair with the highest start + end logit over all the windows, as characters of the
context (through the tokenizer's offsets).
""")

code('''
features = qa.prepare_qa_eval_features(columns([example]), tokenizer, QA_MAX_LENGTH, QA_DOC_STRIDE)
start_logits, end_logits = qa_logits(qa_model, features)  # (windows, QA_MAX_LENGTH) each
print(f"question: {example['question']} (gold answer {example['answers']['text'][0]!r}); "
      f"window 1 of {len(features['input_ids'])}:")
window_ids = features["input_ids"][0]
for name, logits in (("start", start_logits[0]), ("end", end_logits[0])):
    top = np.argsort(logits)[::-1][:4]
    print(f"  highest {name} logits: "
          + ", ".join(f"{tokenizer.decode([window_ids[i]])!r} (token {i}) {logits[i]:.1f}" for i in top))
answer = qa.postprocess_qa_predictions(columns([example]), features, (start_logits, end_logits))[example["id"]]
print(f"best span: {answer!r}")
''')

md("""
### What pretraining buys

The same fine-tuning (steps, batches, learning rate, the same initial QA head) from a model that was never
pretrained, with RoBERTa's random initialisation: whatever it scores, it learned from the QA windows alone.
""")

code('''
torch.manual_seed(SEED)
random_qa_model = RobertaForQuestionAnswering(config)  # RoBERTa's initialisation, no pretraining
finetune_qa(random_qa_model)
random_scores = evaluate_qa(random_qa_model)
print(f"question answering on {len(qa_validation):,} held-out questions, exact match / F1: "
      f"{pretrained_scores['exact_match']:.1f} / {pretrained_scores['f1']:.1f} after pretraining, "
      f"{random_scores['exact_match']:.1f} / {random_scores['f1']:.1f} from random weights")
''')

md("""
### Ask it

The questions of the first held-out article, paragraph by paragraph. `ask` goes through `qa.answer_questions`
(windows, logits and span search in one call, what `ask.py` uses too). Expect mistakes: this is a
one-million-parameter model after a minute of fine-tuning (`make demo` trains longer), and it is weakest on
relatives, teachers and schools, and on towns, whose questions are rare in the training set. To ask your own:
`ask(qa_model, ["your question?", ...], ["its context", ...])`.
""")

code('''
def ask(qa_model, questions: list[str], contexts: list[str]) -> list[dict]:
    """The model's answer to each question about its context: dicts with "answer", "start" and "end" (characters,
    `answer == context[start:end]`) and "score" (start logit + end logit)."""
    return qa.answer_questions(qa_model, tokenizer, questions, contexts, max_seq_length=QA_MAX_LENGTH,
                                  doc_stride=QA_DOC_STRIDE)


article = validation_squad["data"][0]
print(f"{article['title']}, from an article the model has never seen:\\n")
for paragraph in article["paragraphs"]:
    questions = [item["question"] for item in paragraph["qas"]]
    answers = ask(qa_model, questions, [paragraph["context"]] * len(questions))
    print(f"paragraph: {paragraph['context']}")
    for item, answer in zip(paragraph["qas"], answers, strict=True):
        print(f"Q: {item['question']}\\nA: {answer['answer']!r} (character {answer['start']}; "
              f"gold: {item['answers'][0]['text']!r})")
    print()
print(f"question answering part: {time.perf_counter() - qa_started:.0f} s")
''')

md("""
## 9. Sentence classification, as GLUE asks it

GLUE (Wang et al. 2018, [arXiv:1804.07461](https://arxiv.org/abs/1804.07461)), the paper's headline benchmark, is
nine classification tasks: a sentence gets a class (CoLA: is it acceptable English? SST-2: positive or negative?)
or a pair of sentences does (RTE: does the first entail the second?). `RobertaForSequenceClassification` is the
encoder plus transformers' head on the `<s>` token: dropout, a dense layer, tanh, dropout, and one logit per class;
training is cross-entropy.

`demo_world.generate_acceptability` writes CoLA's task in the world's terms: sentences of the world's articles,
half of them with two words swapped, labelled `acceptable` or `unacceptable`. The swap keeps every word, so a model
that only counts words cannot tell them apart; one that knows how the world's sentences go can. The `validation`
sentences are about the held-out people, towns and institutions of section 8.
""")

code('''
import classification
from model import RobertaForSequenceClassification

SENTENCES_TRAIN_STEPS = 300  # batches of fine-tuning: about 20 seconds
SENTENCES_LEARNING_RATE = 3e-4
sentences_started = time.perf_counter()
sentence_rows = {split: demo_world.generate_acceptability(seed=SEED, split=split) for split in ("train", "validation")}
sentence_labels = classification.LabelSpace(demo_world.ACCEPTABILITY_LABELS)
sentence_tensors = {}
for split, rows in sentence_rows.items():
    encodings, truncated = classification.encode(tokenizer, [r["sentence"] for r in rows], None,
                                                 max_length=QA_MAX_LENGTH)
    padded = tokenizer.pad(encodings, return_tensors="pt")  # to the longest sentence of the split
    sentence_tensors[split] = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
                               "labels": torch.tensor(sentence_labels.encode([r["label"] for r in rows], split))}
    print(f"{split}: {len(rows):,} sentences, {truncated} longer than {QA_MAX_LENGTH} tokens (truncated)")
for row in sentence_rows["validation"][:4]:
    print(f"{row['label']:>12s}: {row['sentence']}")
''')

code('''
def finetune_sentences(classifier) -> None:
    """SENTENCES_TRAIN_STEPS random batches of training sentences, with pretraining's optimizer and schedule."""
    optimizer = make_optimizer(classifier, SENTENCES_LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_linear_decay(max(1, SENTENCES_TRAIN_STEPS // 10), SENTENCES_TRAIN_STEPS))
    generator, train = torch.Generator().manual_seed(SEED), sentence_tensors["train"]
    classifier.train()
    for _ in range(SENTENCES_TRAIN_STEPS):
        rows = torch.randint(len(train["labels"]), (QA_BATCH_SIZE,), generator=generator)
        classifier(**{key: values[rows] for key, values in train.items()}).loss.backward()  # cross-entropy
        torch.nn.utils.clip_grad_norm_(classifier.parameters(), max_norm=1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def sentence_scores(classifier) -> tuple[float, float]:
    """Accuracy and Matthews correlation (CoLA's metric) on the held-out sentences, in percent, as the fine-tuning
    script computes them (classification.py)."""
    classifier.eval()
    data = sentence_tensors["validation"]
    logits = torch.cat([classifier(data["input_ids"][i : i + 256], data["attention_mask"][i : i + 256]).logits
                        for i in range(0, len(data["labels"]), 256)])
    predicted, gold = logits.argmax(-1).numpy(), data["labels"].numpy()
    return 100 * classification.accuracy(predicted, gold), 100 * classification.matthews_correlation(predicted, gold)


sentence_config = RobertaConfig.from_dict(config.to_dict(), id2label=sentence_labels.id2label())
sentence_results = {}
for backbone in ("pretrained", "random"):
    torch.manual_seed(SEED)  # the same head for both
    classifier = RobertaForSequenceClassification(sentence_config)
    if backbone == "pretrained":
        classifier.roberta.load_state_dict(model.roberta.state_dict())
    finetune_sentences(classifier)
    sentence_results[backbone] = sentence_scores(classifier)
(accuracy, mcc), (random_accuracy, random_mcc) = sentence_results["pretrained"], sentence_results["random"]
print(f"acceptability of {len(sentence_rows['validation']):,} held-out sentences, accuracy: {accuracy:.1f} after "
      f"pretraining, {random_accuracy:.1f} from random weights (half of each label: 50 is chance); Matthews "
      f"correlation {mcc:.1f} vs {random_mcc:.1f}")
print(f"classification part: {time.perf_counter() - sentences_started:.0f} s; "
      f"whole notebook: {time.perf_counter() - notebook_started:.0f} s")
''')

md("""
## Where next

* `prepare_data.py`: the same tokenizing and packing for a real corpus (English Wikipedia + BookCorpus from the
  Hugging Face Hub, your own text files, or `--dataset demo`), written to a data store for training.
* `train.py`: the loop of section 6 at scale, on one or many GPUs with `accelerate launch`: mixed precision,
  gradient accumulation to RoBERTa's large batches, checkpoints that resume exactly, evaluation, logging.
* `finetune_roberta_qa.py`: section 8 at scale, with transformers' Trainer: SQuAD 1.1 or 2.0 (or the demo world's
  questions), from a `train.py` checkpoint, published weights or random initialisation, scored by exact match and
  F1 (roberta-base: about 86 / 92 on SQuAD 1.1).
* `finetune_roberta_classification.py`: section 9 at scale: the nine GLUE tasks or your own labelled text (CSV or
  JSON lines), with the paper's recipe and each task's official metrics; `classify.py` labels new text with it.
* `make demo` runs all of them on the demo world, offline, in about 8 minutes on a 2-core CPU, with a
  longer pretraining and fine-tuning than here; the README has the commands for a real roberta-base run.
""")


# ----------------------------------------------------------------------------------------------------------------
# Writing and running
# ----------------------------------------------------------------------------------------------------------------


def build() -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    notebook.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                      for kind, src in CELLS]
    for i, cell in enumerate(notebook.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding gives the same file
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int) -> float:
    """Run the notebook in notebooks/ (as a reader would) and fill in its outputs; returns the seconds it took."""
    from nbclient import NotebookClient

    started = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action=argparse.BooleanOptionalAction, default=False,
                        help="run the notebook and save it with its outputs")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell when executing")
    args = parser.parse_args()
    notebook = build()
    if args.execute:
        print(f"executed in {execute(notebook, args.timeout):.0f} s")
    nbformat.write(notebook, NOTEBOOK)
    print(f"wrote {NOTEBOOK} ({NOTEBOOK.stat().st_size / 1024:.0f} KiB)")
    if REPOSITORY == "OWNER/REPO":
        print("note: REPOSITORY (top of this script) is still the placeholder OWNER/REPO, so the notebook has no Colab "
              "badge and no clone step: it runs inside a clone only")


if __name__ == "__main__":
    main()
