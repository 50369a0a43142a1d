"""Training throughput of a small GPT on the standard-library corpus, in tokens per second.

    python benchmarks/bench_training.py                      # CPU or the one GPU pick_device finds
    python benchmarks/bench_training.py --preset tiny --steps 200
    torchrun --nproc_per_node 4 benchmarks/bench_training.py --batch 64   # DDP: global batch of 64

Chapter 7 (training objectives) uses the same loop. Prints one line per run; the first steps are a
warm-up and not timed.
"""
from __future__ import annotations

import argparse
import time

import torch

from companion import TransformerConfig, build_model, count_parameters, presets
from companion.data import CharTokenizer, encode_corpus, random_windows, stdlib_corpus
from companion.device import describe, pick_device, seed_everything
from companion.training import TrainConfig, init_distributed, next_token_objective, train

SIZES = {  # the chapter's CPU model, and the tiny preset (d_model 128, 4 layers)
    "chapter": dict(d_model=64, heads=4, layers=2, context_length=64),
    "tiny": dict(d_model=presets["tiny"].d_model, heads=presets["tiny"].heads, layers=presets["tiny"].layers,
                 context_length=presets["tiny"].context_length),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=tuple(SIZES), default="chapter")
    parser.add_argument("--batch", type=int, default=32, help="global batch (split over processes under torchrun)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    args = parser.parse_args()

    rank, world = init_distributed()
    device = torch.device("cuda", torch.cuda.current_device()) if world > 1 and torch.cuda.is_available() else pick_device(args.device)
    text = stdlib_corpus()
    tokenizer = CharTokenizer(text)
    size = SIZES[args.preset]
    ids = encode_corpus(text, tokenizer, size["context_length"])
    seed_everything(0)
    config = TransformerConfig(kind="decoder", vocab_size=tokenizer.vocab_size, **size)
    model = build_model(config).to(device)
    batches = random_windows(ids, args.batch, size["context_length"])
    settings = dict(lr=1e-3, warmup_steps=0, progress=False)
    train(model, batches, next_token_objective, TrainConfig(steps=args.warmup, **settings))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    history = train(model, batches, next_token_objective, TrainConfig(steps=args.steps, **settings))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch * size["context_length"]
    if rank == 0:
        print(f"{args.preset}: {count_parameters(model):,} parameters, batch {args.batch} x {size['context_length']}, "
              f"{world} process(es) on {describe(device)}, torch threads {torch.get_num_threads()}: "
              f"{tokens / seconds:,.0f} tokens/s ({seconds / args.steps * 1000:.1f} ms/step), "
              f"final loss {history.losses[-1]:.3f}")


if __name__ == "__main__":
    main()
