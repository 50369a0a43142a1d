"""Training throughput of a GPT: tokens per second, peak memory, and on CUDA the model FLOPs utilisation.

    python benchmarks/bench_training.py                      # CPU or the one GPU pick_device finds
    python benchmarks/bench_training.py --preset tiny --steps 200
    python benchmarks/bench_training.py --preset gpt2-small --batch 16 --steps 50 --compile   # on a GPU
    torchrun --nproc_per_node 4 benchmarks/bench_training.py --batch 64   # DDP: global batch of 64

Chapter 7 (training objectives) uses the same loop (`companion.training.train`: bf16 autocast on CUDA,
AdamW, gradient clipping). The `chapter` and `tiny` sizes train on the standard-library corpus; the
`gpt2-small` size (124M parameters, vocabulary 50257) on random tokens, as speed does not depend on
the data. The first steps are a warm-up and not timed.

Model FLOPs utilisation (MFU) is the rate of useful arithmetic over the device's peak bf16 rate. Per
token the model does 6N + 12 L H Q T floating-point operations for the forward and backward passes
(Chowdhery et al. 2022, appendix B): 6 per weight (2 forward, 4 backward) and the attention scores
and their use, with N the parameters that multiply (every one but the position table), L layers,
H heads, Q = d_head and T the sequence length. Recomputation is not counted: MFU, not HFU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from companion import TransformerConfig, build_model, count_parameters, presets
from companion.data import CharTokenizer, encode_corpus, random_windows, stdlib_corpus
from companion.device import describe, pick_device, seed_everything
from companion.training import TrainConfig, init_distributed, next_token_objective, train

SIZES = {  # the chapter's CPU model, the tiny preset (d_model 128, 4 layers), and GPT-2's 124M model
    "chapter": dict(d_model=64, heads=4, layers=2, context_length=64),
    "tiny": dict(
        d_model=presets["tiny"].d_model,
        heads=presets["tiny"].heads,
        layers=presets["tiny"].layers,
        context_length=presets["tiny"].context_length,
    ),
    "gpt2-small": dict(
        d_model=768, heads=12, layers=12, context_length=1024, activation="gelu_tanh", vocab_size=50257
    ),
}

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, without sparsity); the first name found
# in torch.cuda.get_device_name() counts. --peak-tflops overrides it.
PEAK_BF16_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 6000 Ada", 364.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("A6000", 155.0),
]


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def flops_per_token(model: torch.nn.Module, config: TransformerConfig, seq_len: int) -> float:
    """6N + 12 L H Q T: N counts every parameter that multiplies, so not the position table."""
    n = count_parameters(model)
    positions = getattr(model.embed.positions, "embedding", None)
    if positions is not None:
        n -= positions.weight.numel()
    return 6 * n + 12 * config.layers * config.heads * config.d_head * seq_len


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "GPU memory allocated"
    # ru_maxrss is in KiB on Linux: the whole process's resident peak, Python and data included
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process resident memory"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=tuple(SIZES), default="chapter")
    parser.add_argument(
        "--batch", type=int, default=32, help="global batch (split over processes under torchrun)"
    )
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default: the size's context)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--attention-path", choices=("fused", "einops"), default="fused")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (fullgraph=True)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s for MFU"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rank, world = init_distributed()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if world > 1 and torch.cuda.is_available()
        else pick_device(args.device)
    )
    size = dict(SIZES[args.preset])
    seq = args.seq or size["context_length"]
    if args.preset == "gpt2-small":
        ids = torch.randint(0, size["vocab_size"], (200_000,), generator=torch.Generator().manual_seed(0))
    else:
        text = stdlib_corpus()
        tokenizer = CharTokenizer(text)
        size["vocab_size"] = tokenizer.vocab_size
        ids = encode_corpus(text, tokenizer, seq)
    seed_everything(0)
    config = TransformerConfig(kind="decoder", attention_path=args.attention_path, **size)
    model = build_model(config).to(device)
    runner = torch.compile(model, fullgraph=True) if args.compile else model
    batches = random_windows(ids, args.batch, seq)
    settings = dict(lr=3e-4, warmup_steps=0, progress=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    train(runner, batches, next_token_objective, TrainConfig(steps=args.warmup, **settings))
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    history = train(runner, batches, next_token_objective, TrainConfig(steps=args.steps, **settings))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch * seq
    rate = tokens / seconds
    achieved = rate * flops_per_token(model, config, seq)  # FLOP/s over all processes
    peak = peak_tflops(device, args.peak_tflops)
    memory, what = peak_memory_mib(device)
    if rank == 0:
        mfu = (
            f"MFU {achieved / (peak * 1e12 * world):.1%} of {peak:g} TFLOP/s bf16 per device"
            if peak
            else "MFU: no peak known for this device (give --peak-tflops)"
        )
        print(
            f"{args.preset}: {count_parameters(model):,} parameters, batch {args.batch} x {seq}, "
            f"{world} process(es) on {describe(device)}{', compiled' if args.compile else ''}, "
            f"attention {args.attention_path}, torch threads {torch.get_num_threads()}: "
            f"{rate:,.0f} tokens/s ({seconds / args.steps * 1000:.1f} ms/step), {achieved / 1e12:.2f} TFLOP/s, {mfu}; "
            f"peak {what} {memory:,.0f} MiB; warm-up ({args.warmup} steps{', compiling' if args.compile else ''}) "
            f"{warmup_s:.1f} s; final loss {history.losses[-1]:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
