"""Greedy decoding with and without the KV cache: wall-clock time, speed-up, and the cache's memory.

    .venv/bin/python benchmarks/bench_decoding.py                      # tiny preset, 256 new tokens
    .venv/bin/python benchmarks/bench_decoding.py --new-tokens 256 1024
    python benchmarks/bench_decoding.py --preset gpt2-small --new-tokens 1024   # on a GPU

The model is freshly initialised (speed does not depend on the weights). When prompt + new tokens
exceed the preset's context, its context_length is raised to fit: only the position table grows,
every layer keeps its size. Both runs must produce the same tokens, or the script fails.
Chapter 6 (decoder inference and the KV cache) shows the figures this prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from companion import build_model, presets
from companion.decoding import generate, kv_cache_bytes, new_caches
from companion.device import describe, pick_device


def timed_generate(model, prompt, n: int, use_cache: bool) -> tuple[float, float, torch.Tensor]:
    """Wall-clock seconds, this process's CPU seconds (steadier on a shared machine), and the tokens."""
    device = prompt.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    out = generate(model, prompt, n, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="tiny", choices=[k for k, c in presets.items() if c.kind == "decoder"]
    )
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[256], help="lengths to generate")
    parser.add_argument("--prompt-tokens", type=int, default=1, help="prompt length (random ids)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; the fastest counts")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (fullgraph=True); the warm-up then compiles",
    )
    args = parser.parse_args(argv)
    if min(args.new_tokens) < 1 or args.prompt_tokens < 1 or args.repeats < 1:
        parser.error("--new-tokens, --prompt-tokens and --repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    config = presets[args.preset]
    needed = args.prompt_tokens + max(args.new_tokens)
    if needed > config.context_length:
        print(f"note: context_length raised from {config.context_length} to {needed} to fit the longest run")
        config = config.replace(context_length=needed)
    torch.manual_seed(args.seed)
    model = build_model(config).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    if args.compile:
        model = torch.compile(
            model, fullgraph=True
        )  # generate takes the wrapper; it compiles once per kind of step
    print(
        f"preset {args.preset}: {config.layers} layers, d_model {config.d_model}, {config.heads} heads, "
        f"{params / 1e6:.2f}M parameters; device {describe(device)}; {torch.get_num_threads()} CPU threads"
        f"{'; compiled' if args.compile else ''}"
    )
    prompt = torch.randint(
        0, config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(args.seed)
    ).to(device)
    generate(model, prompt, 4)  # warm-up: first calls allocate and pick kernels (and compile)
    generate(model, prompt, 4, use_cache=False)
    if args.compile:  # uncached steps see a new length each time: let the dynamic-shape graph be compiled too
        generate(model, prompt, 4, use_cache=False)

    print(
        f"{'new tokens':>10} {'cached':>10} {'recomputed':>11} {'speed-up':>9} {'cached rate':>16}"
        f" {'CPU-time speed-up':>18}  same tokens"
    )
    for n in args.new_tokens:
        # Interleaved, cached then recomputed in each repeat, so a machine shared with other work slows
        # both alike; the fastest of each counts.
        runs = [
            (timed_generate(model, prompt, n, True), timed_generate(model, prompt, n, False))
            for _ in range(args.repeats)
        ]
        cached = min((r[0] for r in runs), key=lambda r: r[0])
        full = min((r[1] for r in runs), key=lambda r: r[0])
        same = torch.equal(cached[2], full[2])
        print(
            f"{n:>10} {cached[0]:>9.2f}s {full[0]:>10.2f}s {full[0] / cached[0]:>8.1f}x "
            f"{n / cached[0]:>9.0f} tokens/s {full[1] / cached[1]:>17.1f}x  {'yes' if same else 'NO'}"
        )
        if not same:
            print("cached and recomputed tokens differ", file=sys.stderr)
            return 1

    positions = args.prompt_tokens + max(args.new_tokens)
    for dtype in (torch.float32, torch.bfloat16):
        caches = new_caches(config, 1, positions, device="meta", dtype=dtype)  # shapes only, no memory
        measured = sum(c.nbytes for c in caches)
        formula = kv_cache_bytes(config, positions, bytes_per_value=dtype.itemsize)
        print(
            f"KV cache for {positions} positions in {str(dtype).replace('torch.', '')}: formula 2*{config.layers}*"
            f"{config.n_kv_heads}*{config.d_head}*{positions}*{dtype.itemsize} = {formula / 2**20:.2f} MiB, "
            f"tensors {measured / 2**20:.2f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
