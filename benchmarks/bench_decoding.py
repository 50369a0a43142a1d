"""Greedy decoding with and without the KV cache: wall-clock time, speed-up, and the cache's memory.

    .venv/bin/python benchmarks/bench_decoding.py                      # tiny preset, 256 new tokens
    .venv/bin/python benchmarks/bench_decoding.py --new-tokens 256 1024
    python benchmarks/bench_decoding.py --preset gpt2-small --new-tokens 1024   # on a GPU

    .venv/bin/python benchmarks/bench_decoding.py --flat --threads 1 --repeats 5

The model is freshly initialised (speed does not depend on the weights). When prompt + new tokens
exceed the preset's context, its context_length is raised to fit: only the position table grows,
every layer keeps its size. Both runs must produce the same tokens, or the script fails.
Chapter 6 (decoder inference and the KV cache) shows the figures this prints.

--flat adds three rows: the same weights run by `FlatLoop`, a flat loop of the same PyTorch calls with
no nn.Module inside it, reading each weight through the modules at every step, reading them all once
before the first step, and that with q, k and v fused into one product. Each must give the model's
tokens. Set beside the model's row, they measure what a step pays for the module structure (attribute
reads, module calls, checks) rather than for its kernels, and what speed-up the cache reaches without it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from companion import build_model, presets
from companion.config import TransformerConfig
from companion.decoding import generate, kv_cache_bytes, new_caches
from companion.device import describe, pick_device
from companion.models import DecoderLM

# ---------------------------------------------------------------- the flat loop (--flat)

# What FlatLoop computes with: the config fields of the GPT-2 family (the tiny and gpt2 presets).
FLAT_CONFIG = {
    "positional": "learned",
    "norm": "pre",
    "norm_type": "layer",
    "qk_norm": False,
    "embedding_norm": False,
    "attention_path": "fused",
}
FLAT_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def flat_unsupported(config: TransformerConfig) -> str | None:
    """Why FlatLoop cannot run a model of this config, or None when it can."""
    for name, wanted in FLAT_CONFIG.items():
        if getattr(config, name) != wanted:
            return f"{name}={getattr(config, name)!r}: the flat loop runs {name}={wanted!r} only"
    if config.activation not in FLAT_ACTIVATIONS:
        return f"activation={config.activation!r}: the flat loop runs {sorted(FLAT_ACTIVATIONS)} only"
    if config.n_kv_heads != config.heads:
        return f"kv_heads={config.kv_heads}: the flat loop runs one key/value head per query head only"
    return None


def layer_weights(block, fuse_qkv: bool = False) -> tuple:
    """One decoder block's tensors, read through its modules, as `FlatLoop.logits` takes them:
    (norm, [projections], out, norm, up, down), each a (weight, bias) pair (bias None without config.bias).
    fuse_qkv: the q, k and v projections as one (weight, bias) pair, concatenated along the output axis."""
    attention, feed_forward = block.attention, block.feed_forward

    def pair(module):
        return module.weight, module.bias

    projections = [pair(attention.to_q), pair(attention.to_k), pair(attention.to_v)]
    if fuse_qkv:
        weights, biases = zip(*projections)
        projections = [(torch.cat(weights), None if biases[0] is None else torch.cat(biases))]
    return (
        pair(block.attention_norm),
        projections,
        pair(attention.to_out),
        pair(block.feed_forward_norm),
        pair(feed_forward.up),
        pair(feed_forward.down),
    )


class FlatLoop:
    """A measuring stick, not a second model: a DecoderLM's greedy decoding as one flat loop of the
    calls its forward pass makes (F.embedding, F.layer_norm, F.linear, the activation,
    F.scaled_dot_product_attention), with no nn.Module, check or hook inside the loop.

    read_each_step=True reads every weight through the modules (model.decoder.blocks[i].attention.to_q
    .weight, ...) at every step, as a module's forward does; False reads them once, before the first step.
    fuse_qkv=True (with read_each_step=False) projects q, k and v with one matrix product, as GPT-2's
    c_attn does, instead of the model's three.
    """

    def __init__(self, model: DecoderLM, read_each_step: bool, fuse_qkv: bool = False):
        reason = flat_unsupported(model.config) if isinstance(model, DecoderLM) else type(model).__name__
        if reason:
            raise ValueError(f"FlatLoop runs a DecoderLM of the GPT-2 family; got {reason}")
        if read_each_step and fuse_qkv:
            raise ValueError("fuse_qkv concatenates the weights once: it needs read_each_step=False")
        self.model, self.config = model, model.config
        self.read_each_step, self.fuse_qkv = read_each_step, fuse_qkv
        self.activation = FLAT_ACTIVATIONS[self.config.activation]
        self.weights = self.read()

    def read(self) -> tuple:
        m = self.model
        return (
            m.embed.tokens.weight,
            m.embed.positions.embedding.weight,
            m.embed.scale,
            [layer_weights(block, self.fuse_qkv) for block in m.decoder.blocks],
            (m.decoder.final_norm.weight, m.decoder.final_norm.bias),
            (m.head.weight, m.head.bias),
        )

    def logits(self, ids: Tensor, start: int, caches: list[tuple[Tensor, Tensor]] | None) -> Tensor:
        """(batch, vocab) logits after the last of ids (batch, seq), which sit at positions start...
        caches: each layer's preallocated (keys, values), filled up to start; None recomputes from 0."""
        if self.read_each_step:
            self.weights = self.read()
        tokens, positions, scale, blocks, final_norm, head = self.weights
        c = self.config
        batch, seq = ids.shape
        width, eps = (c.d_model,), c.layer_norm_eps
        x = F.embedding(ids, tokens) * scale + positions[start : start + seq]
        for i, (norm_1, projections, out, norm_2, up, down) in enumerate(blocks):
            h = F.layer_norm(x, width, *norm_1, eps)
            projected = [F.linear(h, *weight_bias) for weight_bias in projections]
            if len(projected) == 1:  # fused: one (batch, seq, 3 d_model) product, split into q, k, v
                projected = projected[0].split(c.d_model, dim=-1)
            q, k, v = (t.view(batch, seq, c.heads, c.d_head).transpose(1, 2) for t in projected)
            if caches is not None:
                keys, values = caches[i]
                keys[:, :, start : start + seq], values[:, :, start : start + seq] = k, v
                k, v = keys[:, :, : start + seq], values[:, :, : start + seq]
            # The queries are the last seq positions: causal among themselves when there are several
            # (the prompt, fed from position 0); one new query may see every stored key.
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1)
            x = x + F.linear(attended.transpose(1, 2).reshape(batch, seq, c.d_model), *out)
            h = F.layer_norm(x, width, *norm_2, eps)
            x = x + F.linear(self.activation(F.linear(h, *up)), *down)
        return F.linear(F.layer_norm(x[:, -1], width, *final_norm, eps), *head)

    def generate(self, prompt: Tensor, n: int, use_cache: bool) -> Tensor:
        """Greedy: prompt (batch, seq) and n new tokens, as companion.decoding.generate returns them."""
        c = self.config
        new, start, caches, tokens = prompt, 0, None, []
        with torch.inference_mode():
            if use_cache:
                shape = (prompt.shape[0], c.heads, prompt.shape[1] + n, c.d_head)
                caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(c.layers)]
            for _ in range(n):
                token = self.logits(new, start, caches).argmax(-1, keepdim=True)
                tokens.append(token)
                if use_cache:  # the next step reads the new token alone, after the positions cached
                    start, new = start + new.shape[1], token
                else:  # the next step recomputes the whole sequence
                    new = torch.cat([new, token], dim=1)
        return torch.cat([prompt, *tokens], dim=1)  # outside inference mode, as generate returns it


def timed_generate(run, prompt, n: int, use_cache: bool) -> tuple[float, float, torch.Tensor]:
    """Wall-clock seconds, this process's CPU seconds (steadier on a shared machine), and the tokens of
    run(prompt, n, use_cache), a greedy generation."""
    device = prompt.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    out = run(prompt, n, use_cache)
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
    parser.add_argument(
        "--flat",
        action="store_true",
        help="also time FlatLoop, the same weights and calls with no module structure (GPT-2 family, CPU)",
    )
    args = parser.parse_args(argv)
    if min(args.new_tokens) < 1 or args.prompt_tokens < 1 or args.repeats < 1:
        parser.error("--new-tokens, --prompt-tokens and --repeats must be at least 1")
    if args.flat and args.compile:
        parser.error("--flat sets eager loops beside the eager model; run it without --compile")
    if args.flat and args.device not in (None, "cpu"):
        parser.error("--flat times fp32 loops on the CPU; a GPU's model runs under bf16 autocast")
    if args.flat and (reason := flat_unsupported(presets[args.preset])):
        parser.error(f"--flat cannot run preset {args.preset}: {reason}")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device("cpu" if args.flat else args.device)
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
    loops = {"model": lambda ids, n, use_cache: generate(model, ids, n, use_cache=use_cache)}
    if args.flat:
        for label, read_each_step, fuse_qkv in (
            ("flat, reads/step", True, False),
            ("flat", False, False),
            ("flat, fused qkv", False, True),
        ):
            loops[label] = FlatLoop(model, read_each_step, fuse_qkv).generate
    for run in loops.values():  # warm-up: first calls allocate and pick kernels (and compile)
        run(prompt, 4, True)
        run(prompt, 4, False)
    if args.compile:  # uncached steps see a new length each time: let the dynamic-shape graph be compiled too
        generate(model, prompt, 4, use_cache=False)

    print(
        f"{'loop':<16} {'new tokens':>10} {'cached':>10} {'recomputed':>11} {'speed-up':>9}"
        f" {'cached rate':>16} {'CPU-time speed-up':>18}  same tokens"
    )
    for n in args.new_tokens:
        # Interleaved, cached then recomputed in each repeat, for every loop in turn, so a machine shared
        # with other work slows them all alike; the fastest of each counts.
        runs = [
            {
                label: (timed_generate(run, prompt, n, True), timed_generate(run, prompt, n, False))
                for label, run in loops.items()
            }
            for _ in range(args.repeats)
        ]
        reference = runs[0]["model"][0][2]  # the model's cached tokens
        for label in loops:
            cached = min((r[label][0] for r in runs), key=lambda t: t[0])
            full = min((r[label][1] for r in runs), key=lambda t: t[0])
            same = torch.equal(cached[2], full[2]) and torch.equal(cached[2], reference)
            print(
                f"{label:<16} {n:>10} {cached[0]:>9.2f}s {full[0]:>10.2f}s {full[0] / cached[0]:>8.1f}x "
                f"{n / cached[0]:>9.0f} tokens/s {full[1] / cached[1]:>17.1f}x  {'yes' if same else 'NO'}"
            )
            if not same:
                print(f"{label}: cached, recomputed and the model's tokens differ", file=sys.stderr)
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
