"""Byte-level BPE on the course corpus: training time for 1,000 merges and encode throughput.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bpe.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bpe.py --merges 2000 --repeats 5

Trains companion.bpe on companion.data.stdlib_corpus() (the offline text the chapters use), then
encodes the whole corpus with a fresh tokenizer (each distinct piece runs the merge loop once,
its repeats come from the cache) and again with the same one (every piece from the cache). Prints the best of
--repeats runs. If Hugging Face `tokenizers` is installed, its Rust trainer is timed on the same
text for scale; it runs on every core unless RAYON_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from companion.bpe import BPETokenizer
from companion.data import stdlib_corpus


def best_of(repeats: int, fn):
    """Smallest wall-clock seconds over repeats, and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    text = stdlib_corpus()
    vocab_size = 256 + args.merges
    print(f"corpus: {len(text):,} characters, {len(text.encode()):,} bytes")

    seconds, tok = best_of(args.repeats, lambda: BPETokenizer.train(text, vocab_size))
    print(f"train {len(tok.merges):,} merges: {seconds:.2f} s")

    cold, ids = best_of(args.repeats, lambda: BPETokenizer(tok.merges).encode(text))
    warm, _ = best_of(args.repeats, lambda: tok.encode(text))
    assert tok.decode(ids) == text, "encode/decode did not round-trip the corpus"
    print(f"encode: {len(ids):,} tokens ({len(text.encode()) / len(ids):.2f} bytes per token)")
    print(f"encode, fresh tokenizer: {len(ids) / cold:,.0f} tokens/s")
    print(f"encode, cached pieces:   {len(ids) / warm:,.0f} tokens/s")

    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        return

    def hf_train():
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        hf.train_from_iterator([text], trainer)
        return hf

    seconds, hf = best_of(args.repeats, hf_train)
    hf_encode, hf_ids = best_of(args.repeats, lambda: hf.encode(text).ids)
    print(
        f"tokenizers (Rust), for scale: train {seconds:.2f} s, encode {len(hf_ids) / hf_encode:,.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
