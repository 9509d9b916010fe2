"""Write notebooks/roberta_walkthrough.ipynb from the cells below, and optionally execute it in place.

    python notebooks/build_walkthrough.py            # write the notebook without outputs
    python notebooks/build_walkthrough.py --execute  # write it, run it top to bottom (~2-3 min on 2 CPU cores),
                                                     # and save it with its outputs (what the repository commits)

The notebook is the source of truth for readers; this script is the source of truth for edits, so that a change
is reviewed as Python text and the committed outputs always come from one clean top-to-bottom run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "roberta_walkthrough.ipynb"
COLAB_URL = "https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/roberta_walkthrough.ipynb"
REPO_URL = "https://github.com/OWNER/REPO"

CELLS: list[tuple[str, str]] = []  # (kind, source), kind "md" or "code", in notebook order


def md(source: str) -> None:
    CELLS.append(("md", source.strip("\n")))


def code(source: str) -> None:
    CELLS.append(("code", source.strip("\n")))


# ----------------------------------------------------------------------------------------------------------------
# The notebook
# ----------------------------------------------------------------------------------------------------------------

md(f"""
# RoBERTa from scratch, in a few minutes on a CPU

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})

This notebook walks through masked-language-model pretraining as RoBERTa does it, with the code of this
repository (`model.py`, `utils.py`), and trains a tiny model to fill in blanks, on the CPU, in a few minutes.
It runs offline: the text is the built-in demo world (`demo_world.py`, encyclopedia articles about a fictional
country), or any text file you point it at.

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
(4) builds the model and follows one batch through it, (5) asks it to fill in blanks, (6) trains it for a few
minutes, and (7) asks again.
""")

code(f'''
# Setup: install the requirements only where they are missing (a fresh Colab runtime; on Colab the repository is
# fetched first, as the notebook arrives there alone), then make `import model, utils, demo_world` work.
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_URL = "{REPO_URL}"  # fetched only where this notebook runs outside a clone
CLONE_DIR = Path("roberta-from-scratch")


def find_repo_root() -> Path | None:
    """The folder holding model.py: here or above (the notebook lives in notebooks/), or an earlier clone."""
    candidates = [Path.cwd(), *Path.cwd().parents, CLONE_DIR]
    return next((folder.resolve() for folder in candidates if (folder / "model.py").is_file()), None)


def missing_requirements() -> list[str]:
    """What this notebook imports and cannot find (utils.py needs transformers 5 or later)."""
    missing = [name for name in ("torch", "transformers", "tokenizers", "matplotlib")
               if importlib.util.find_spec(name) is None]
    if "transformers" not in missing and int(importlib.metadata.version("transformers").split(".")[0]) < 5:
        missing.append("transformers>=5")
    return missing


ROOT = find_repo_root()
if ROOT is None:
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", REPO_URL, str(CLONE_DIR)], check=True)
    ROOT = CLONE_DIR.resolve()
if missing_requirements():
    print("installing:", ", ".join(missing_requirements()))
    requirements = ROOT / "requirements.txt"
    %pip install -q -r "{{requirements}}"
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
SEED = 0

# Threads: one per two cores, at most four. The matrices here are small; and on a 2-core machine busy with anything
# else, two OpenMP threads waiting on each other ran 30 times slower than one (measured on a busy 2-core VM).
torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
torch.manual_seed(SEED)
notebook_started = time.perf_counter()
''')

code('''
import demo_world
from prepare_data import read_text_file_documents

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

`utils.train_bpe_tokenizer` trains RoBERTa's tokenizer on our text: it starts from the 256 byte values and
learns merges of frequent neighbours until the vocabulary is full. A leading space is part of a token (shown as
`Ġ`), so `" painter"` and `"painter"` are different tokens. The special tokens keep RoBERTa's ids.
""")

code('''
import utils

tokenizer = utils.train_bpe_tokenizer(train_documents, vocab_size=VOCAB_SIZE, model_max_length=BLOCK_SIZE)
print(f"vocabulary: {len(tokenizer):,} tokens")
print("special tokens:", {token: tokenizer.convert_tokens_to_ids(token) for token in utils.SPECIAL_TOKENS})

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

`utils.mask_tokens` is RoBERTa's recipe, drawn as the paper's own code (fairseq) draws it: a sequence with n
ordinary tokens gets exactly int(0.15 n + U) of them chosen, U uniform in [0, 1), so 15% on average (special
tokens never are). A chosen token is replaced by `<mask>` 80% of the time, by a random token 10% of the time, and
left as it is 10% of the time, so that the model cannot learn that only `<mask>` positions matter. The labels
hold the original ids at the chosen positions and -100 (ignored by the loss) everywhere else.
""")

code('''
example = tokenizer(documents[0], truncation=True, max_length=48, return_tensors="pt")["input_ids"]  # (1, 48)
generator = torch.Generator().manual_seed(SEED)
inputs, labels = utils.mask_tokens(example, tokenizer, mlm_probability=0.15, generator=generator)

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
    inputs, labels = utils.mask_tokens(example, tokenizer, generator=generator)
    print(f"draw {draw}: positions {(labels[0] != -100).nonzero().flatten().tolist()}")

# Over many tokens, the recipe's proportions appear.
inputs, labels = utils.mask_tokens(train_blocks, tokenizer, generator=generator)
chosen = labels != -100
ordinary = ~torch.isin(train_blocks, torch.tensor(tokenizer.all_special_ids))
print(f"\\nchosen: {chosen.sum() / ordinary.sum():.1%} of ordinary tokens; of those "
      f"{(inputs[chosen] == tokenizer.mask_token_id).float().mean():.1%} <mask>, "
      f"{(inputs[chosen] == train_blocks[chosen]).float().mean():.1%} unchanged, the rest random")
''')

# ---------------------------------------------------------------------------------------------------------------
md("""
## 4. The model

`model.py` is BERT's encoder with RoBERTa's conventions: token + position embeddings, a stack of post-LayerNorm
transformer layers, and an MLM head whose output matrix is the word-embedding matrix (tied). Ours is tiny:
4 layers of width 128 (roberta-base: 12 of width 768).

**The position offset.** RoBERTa numbers positions from `pad_token_id + 1 = 2`, not 0 (a quirk inherited from
fairseq: position 1 is the padding's). So a model for blocks of 64 tokens needs a position table of
`64 + 2 = 66` rows; a table of 64 rows is the classic "index out of range" of pretraining RoBERTa from scratch.
""")

code('''
from model import RobertaConfig, RobertaForMaskedLM

config = RobertaConfig(
    vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
    max_position_embeddings=BLOCK_SIZE + 2,  # positions start at pad_token_id + 1 = 2
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
''')

md("""
One batch of 3 blocks through the model, with the shape after each stage (B = batch, T = tokens, C = width,
V = vocabulary). With `labels`, the head runs only on the masked positions: it is the largest matrix product of
the model, and the other positions do not count in the loss.
""")

code('''
import math

shapes = []
stages = {"embeddings": model.roberta.embeddings, "layer 0: attention": model.roberta.encoder.layer[0].attention,
          "layer 0: MLP, inner": model.roberta.encoder.layer[0].intermediate, "layer 0": model.roberta.encoder.layer[0],
          f"all {config.num_hidden_layers} layers": model.roberta.encoder, "MLM head": model.lm_head}
hooks = [module.register_forward_hook(lambda module, args, out, name=name: shapes.append((name, tuple(out.shape))))
         for name, module in stages.items()]
batch = train_blocks[:3]
inputs, labels = utils.mask_tokens(batch, tokenizer, generator=generator)
with torch.no_grad():
    dense, sparse = model(inputs), model(inputs, labels=labels)
for hook in hooks:
    hook.remove()
print(f"input ids {tuple(inputs.shape)}")
for name, shape in shapes[: len(stages)]:
    print(f"  {name:<22} -> {shape}")
print(f"without labels: logits {tuple(dense.logits.shape)}")
print(f"with labels:    logits {tuple(sparse.logits.shape)} for the {(labels != -100).sum().item()} masked positions")
print(f"loss {sparse.loss.item():.2f}; a uniform guess scores ln {len(tokenizer)} = {math.log(len(tokenizer)):.2f}")
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
LayerNorm gains are 1-D and not decayed), gradient clipping at 1.0, and a learning rate that warms up linearly and
then decays linearly to zero. The held-out loss is measured with the same masks every time, so its values compare.
""")

code('''
def make_optimizer(model, lr: float) -> torch.optim.AdamW:
    """AdamW as RoBERTa: betas (0.9, 0.98), eps 1e-6, weight decay 0.01 on tensors of rank >= 2 only."""
    decay = [p for p in model.parameters() if p.ndim >= 2]  # weight matrices and embeddings
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # biases, LayerNorm gains and shifts
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def warmup_then_linear_decay(step: int) -> float:
    """Learning-rate multiplier: 0 -> 1 over WARMUP_STEPS, then 1 -> 0 at TRAIN_STEPS."""
    return min((step + 1) / WARMUP_STEPS, max(0.0, (TRAIN_STEPS - step) / (TRAIN_STEPS - WARMUP_STEPS)))


@torch.no_grad()
def heldout_loss(model) -> float:
    """MLM loss on the held-out blocks, with the same masks at every call (a freshly seeded generator)."""
    model.eval()
    inputs, labels = utils.mask_tokens(heldout_blocks, tokenizer, generator=torch.Generator().manual_seed(1234))
    loss = model(inputs, labels=labels).loss.item()
    model.train()
    return loss
''')

code('''
optimizer = make_optimizer(model, LEARNING_RATE)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay)
generator = torch.Generator().manual_seed(SEED)
train_losses, evaluations = [], [(0, heldout_loss(model))]
model.train()
started = time.perf_counter()
for step in range(1, TRAIN_STEPS + 1):
    batch = train_blocks[torch.randint(len(train_blocks), (BATCH_SIZE,), generator=generator)]  # (B, T)
    inputs, labels = utils.mask_tokens(batch, tokenizer, generator=generator)  # new masks every step
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

code('''
import matplotlib.pyplot as plt

smooth = [sum(train_losses[max(0, i - 49) : i + 1]) / len(train_losses[max(0, i - 49) : i + 1])
          for i in range(len(train_losses))]
fig, ax = plt.subplots(figsize=(7, 3.5), dpi=80)
ax.plot(range(1, len(train_losses) + 1), train_losses, color="tab:blue", alpha=0.25, linewidth=0.8,
        label="train loss (each step)")
ax.plot(range(1, len(smooth) + 1), smooth, color="tab:blue", label="train loss (mean of 50 steps)")
ax.plot(*zip(*evaluations, strict=True), "o-", color="tab:orange", label="held-out loss")
ax.set_xlabel("step")
ax.set_ylabel("MLM loss (nats)")
ax.set_title("Pretraining a 4-layer RoBERTa on the CPU")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
''')

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
print(f"whole notebook: {time.perf_counter() - notebook_started:.0f} s")
''')

md("""
## Where next

* `prepare_data.py`: the same tokenizing and packing for a real corpus (English Wikipedia + BookCorpus from the
  Hugging Face Hub, your own text files, or `--dataset demo`), written to a data store for training.
* `train.py`: this loop at scale, on one or many GPUs with `accelerate launch`: mixed precision, gradient
  accumulation to RoBERTa's large batches, checkpoints that resume exactly, evaluation, logging.
* `finetune_roberta_qa.py`: fine-tunes a pretrained checkpoint for extractive question answering (SQuAD, or the
  demo world's questions) and reports exact match and F1.
* `make demo` runs all three on the demo world, offline, in about a quarter of an hour on a laptop CPU; the README
  has the commands for a real roberta-base run.
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


if __name__ == "__main__":
    main()
