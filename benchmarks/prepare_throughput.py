"""Throughput of prepare_data.py end to end against the tokenizer alone, on the same text, in the same run.

    python benchmarks/prepare_throughput.py                      # ../shared/data/text/*.txt, else the demo corpus
    python benchmarks/prepare_throughput.py --text_files a.txt --num_workers 2 --repeat 3
    python benchmarks/prepare_throughput.py --demo                # the demo corpus (2.4 million tokens)
    python benchmarks/prepare_throughput.py --measure_disk        # the ratios behind prepare_data's disk estimate

Baseline: the tokenizer's own batch encoding of the same documents (`tokenizer(texts)`, its Rust threads on every
core). Pipeline: `prepare_data.main()` end to end (read the files, split, tokenise in --num_workers processes,
pack, save the store and the tokenizer), in this process, so that interpreter start-up and imports are not counted.
Both use the same tokenizer (a byte-level BPE trained here on the text first, not timed). Each is run --repeat
times, alternating, after one untimed pipeline run (imports). Where other programs share the CPU, wall times are
noisy: the report gives the fastest and the median runs, and the CPU time each used (process, threads and worker
processes), which contention disturbs much less. The aim: the pipeline costs less than 20% more than tokenising
alone.

--measure_disk measures, on the same text, the ratios prepare_data.py's disk pre-flight uses: the bytes of a
parquet file (snappy, as the Hub's) and of datasets' Arrow cache per byte of UTF-8 text, tokens per byte for
byte-level BPEs of 8,000 and 32,000 trained on that text, and the store's bytes per token.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import corpora  # noqa: E402
import prepare_data  # noqa: E402
import store_writer as store_module  # noqa: E402
from tokenization import train_bpe_tokenizer  # noqa: E402

DEFAULT_TEXT = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "text" / "*.txt")))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text_files", nargs="+", default=DEFAULT_TEXT or None,
                        help="text to prepare (default: ../shared/data/text/*.txt if present, else the demo corpus)")
    parser.add_argument("--demo", action="store_true", help="use the demo corpus, even where the text files exist")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--context_length", type=int, default=512)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--measure_disk", action="store_true", help="measure the disk ratios instead of the speed")
    return parser.parse_args()


def load_texts(text_files: list[str] | None) -> list[str]:
    if text_files:
        return [doc for path in text_files for doc in corpora.read_text_file_documents(path)]
    from demo_world import generate_documents

    return generate_documents(corpora.DEMO_WORLD_SEED)


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # CPU seconds of this process, its threads and its finished child processes
    tokens: int
    phases: dict[str, float] | None = None


@contextlib.contextmanager
def measured(out: list):
    """Append [wall seconds, CPU seconds] of the block to `out`."""
    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    wall, used = time.perf_counter(), cpu()
    yield
    out.extend([time.perf_counter() - wall, cpu() - used])


def time_baseline(tokenizer, texts: list[str]) -> Run:
    """The tokenizer's own batch encoding, with its threads on (nothing has forked in this process).

    Like prepare_data, it reads special-token strings in the text ("<unk>" in WikiText) as text, so that both
    produce the same tokens.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    times = []
    with measured(times):
        ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, split_special_tokens=True,
                        verbose=False)["input_ids"]
    return Run(*times, tokens=sum(map(len, ids)))


def time_pipeline(source_args: list[str], tokenizer_dir: Path, store: Path, args: argparse.Namespace) -> Run:
    argv = [*source_args, "--hf_model_name", str(tokenizer_dir), "--context_length", str(args.context_length),
            "--num_workers", str(args.num_workers), "--path_to_data_store", str(store), "--overwrite"]
    times = []
    with measured(times):
        record = prepare_data.main(argv)
    return Run(*times, tokens=sum(split["tokens"] for split in record["splits"].values()),
               phases=record["seconds_by_phase"])


def main() -> None:
    args = parse_args()
    if args.demo:
        args.text_files = None
    texts = load_texts(args.text_files)
    source_args = ["--text_files", *args.text_files] if args.text_files else ["--dataset", "demo"]
    print(f"text: {', '.join(map(os.path.basename, args.text_files)) if args.text_files else 'demo corpus'} "
          f"({len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f} MB); {args.num_workers} worker(s), "
          f"{os.cpu_count()} CPUs")
    if args.measure_disk:
        measure_disk(texts, source_args, args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_bpe_tokenizer(texts, args.vocab_size, model_max_length=max(512, args.context_length))
        tokenizer.save_pretrained(Path(tmp) / "tokenizer")
        time_pipeline(source_args, Path(tmp) / "tokenizer", Path(tmp) / "store", args)  # warm-up: imports
        baseline, pipeline = [], []
        for _ in range(args.repeat):
            baseline.append(time_baseline(tokenizer, texts))
            pipeline.append(time_pipeline(source_args, Path(tmp) / "tokenizer", Path(tmp) / "store", args))
    report(baseline, pipeline)


def measure_disk(texts: list[str], source_args: list[str], args: argparse.Namespace) -> None:
    """Parquet, Arrow, tokens and store bytes per byte of text (prepare_data's *_PER_TEXT_BYTE constants)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text_bytes = sum(len(t.encode()) for t in texts)
    print(f"text: {text_bytes:,} bytes of UTF-8 in {len(texts):,} documents")
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.table({"text": texts}), Path(tmp) / "text.parquet", compression="snappy")
        arrow = corpora.documents_dataset(texts, Path(tmp) / "text.arrow")
        print(f"parquet (snappy): {(Path(tmp) / 'text.parquet').stat().st_size / text_bytes:.3f} bytes per text byte")
        print(f"Arrow (datasets): {(Path(tmp) / 'text.arrow').stat().st_size / text_bytes:.3f} bytes per text byte")
        del arrow
        for vocab_size in (8000, 32000):
            tokenizer = train_bpe_tokenizer(texts, vocab_size, model_max_length=max(512, args.context_length))
            tokens = sum(map(len, store_module.encode_texts(texts, tokenizer)))
            print(f"BPE {len(tokenizer):,}: {tokens / text_bytes:.3f} tokens per text byte")
            tokenizer.save_pretrained(Path(tmp) / f"tok{vocab_size}")
        store = Path(tmp) / "store"
        record = prepare_data.main([*source_args, "--hf_model_name", str(Path(tmp) / "tok32000"), "--context_length",
                                    str(args.context_length), "--num_workers", str(args.num_workers),
                                    "--path_to_data_store", str(store)])
        blocks = sum(p.stat().st_size for split in ("train", "test") for p in (store / split).glob("*.arrow"))
        tokens = sum(s["tokens"] + s["separators"] for s in record["splits"].values())
        print(f"store: {blocks / tokens:.3f} bytes per token (blocks of {args.context_length}, "
              f"{record['ids_dtype']})")


def report(baseline: list[Run], pipeline: list[Run]) -> None:
    """Fastest run of each (the least disturbed by other programs), medians, and CPU time (the work done)."""
    tokens = baseline[0].tokens
    assert all(run.tokens == tokens for run in baseline + pipeline), "the pipeline and the tokenizer disagree"
    for name, runs in [("tokenizer batch encoding", baseline), ("prepare_data end to end ", pipeline)]:
        fastest = min(runs, key=lambda run: run.wall)
        print(f"{name}: {tokens / fastest.wall:>10,.0f} tokens/s fastest, "
              f"{tokens / statistics.median(r.wall for r in runs):>10,.0f} median, "
              f"{tokens / min(r.cpu for r in runs):>10,.0f} per CPU-second "
              f"(wall s: {', '.join(f'{r.wall:.2f}' for r in runs)})")
    print(f"phases of the fastest pipeline run (s): {min(pipeline, key=lambda run: run.wall).phases}")
    for measure, pick in [("fastest wall", lambda runs: min(r.wall for r in runs)),
                          ("median wall", lambda runs: statistics.median(r.wall for r in runs)),
                          ("CPU time", lambda runs: min(r.cpu for r in runs))]:
        print(f"overhead over tokenising alone, {measure:>12}: {(pick(pipeline) / pick(baseline) - 1) * 100:+6.1f}%"
              f" (goal: under 20%)")


if __name__ == "__main__":
    main()
