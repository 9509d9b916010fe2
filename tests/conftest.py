"""Shared test setup: everything runs offline, and tiny fixtures are built once per session."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Tests never touch the network: the Hub libraries are told to stay offline (also in the scripts the tests run
# as subprocesses, which inherit this environment), and a socket guard below fails any connection attempt.
for name, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}.items():
    os.environ[name] = value

_real_connect = socket.socket.connect


def _guarded_connect(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _real_connect(sock, address)
    raise RuntimeError(f"a test tried to reach the network ({address!r}); tests must run offline")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


WORDS = "the a of on in river city king queen born died lived wrote painted built north south".split()


def sentences(count: int, offset: int = 0) -> str:
    """`count` generated sentences of WORDS, one a line (a document each), numbered from `offset`."""
    return "\n".join(" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) + f" {i}."
                     for i in range(offset, offset + count))


def build_store(folder: Path, tokenizer: str | Path, context_length: int = 16) -> Path:
    """A data store made by prepare_data.py itself from 280 generated sentences (one document a line) with the
    given tokenizer folder: <folder>/store."""
    import prepare_data

    (folder / "corpus.txt").write_text(sentences(280) + "\n")
    prepare_data.main(["--text_files", str(folder / "corpus.txt"), "--hf_model_name", str(tokenizer),
                       "--context_length", str(context_length), "--test_split_pct", "0.1", "--num_workers", "1",
                       "--path_to_data_store", str(folder / "store")])
    return folder / "store"


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A small RoBERTa byte-level BPE tokenizer (vocab 400) trained on generated sentences, saved to a folder."""
    from tokenization import train_bpe_tokenizer

    words = "the a of on in river city king queen born died lived wrote painted built north south".split()
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) + f" {i}." for i in range(400)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400, model_max_length=64)
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def hold_lock_in_another_process(folder: Path, shared: bool = False):
    """A process holding folders.FolderLock on `folder`, as another run would; the caller kills it when done."""
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from folders import FolderLock
        FolderLock({str(folder)!r}, flag="f", shared={shared}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.fixture
def read_only_mount(tmp_path):
    """A folder on a read-only filesystem (a tmpfs mounted read-only; skipped where mounting is not allowed), holding
    what `fill(folder)` put there before it became read-only."""
    mounted = []

    def make(name, fill=lambda folder: None):
        folder = tmp_path / name
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(folder)
        fill(folder)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)])
