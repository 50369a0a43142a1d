"""The companion against Hugging Face `transformers` on the same GPT-2 weights: time ratios, one table.

    .venv/bin/python benchmarks/bench_vs_hf.py                   # CPU, 1 and 2 threads, best of 5
    .venv/bin/python benchmarks/bench_vs_hf.py --threads 1 --only forward
    python benchmarks/bench_vs_hf.py --device cuda --dtype bfloat16 --threads 0   # on a GPU

Both models hold the same weights: a random `transformers.GPT2LMHeadModel` is saved with
`save_pretrained` into a temporary directory and read back by the companion's loader (chapter 5), so
nothing is downloaded. Each row runs both libraries alternately (the order flips every repeat), so a
machine shared with other work slows both alike; the best of the repeats counts. Each row runs in a
process of its own, so no row inherits another's allocations. A ratio below 1 means
the companion is faster. Greedy generations must give identical tokens, or the script fails.

`transformers` comes with the test extras (`pip install -e ".[test]"`); the library never imports it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here reaches the hub

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from companion.decoding import generate
from companion.pretrained import load_pretrained

# (name, GPT2Config keywords): a small model where per-call overhead shows, and the real 124M one.
SMALL = dict(n_layer=4, n_embd=256, n_head=4, vocab_size=256, n_positions=512)
GPT2_SMALL: dict = {}  # transformers' defaults are gpt2-small: 12 layers, d768, 12 heads, vocab 50257
# The companion's tiny preset as a GPT-2 (the loader reads it back as presets["tiny"] exactly, with one
# more position so that 256 tokens fit after a one-token prompt): the KV-cache target's model.
TINY = dict(n_layer=4, n_embd=128, n_head=4, vocab_size=256, n_positions=257, activation_function="gelu")
TINY_NEW_TOKENS = 256


@dataclass
class Work:
    name: str
    ours: Callable[[], object]
    theirs: Callable[[], object]
    same: Callable[[object, object], bool] | None = None  # outputs must agree (greedy tokens)


def build_pair(hf_config: dict, directory: Path, device: torch.device, dtype: torch.dtype):
    """(transformers model, companion model) holding the same random weights, in eval mode."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        **hf_config, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None
    )
    theirs = transformers.GPT2LMHeadModel(config).eval()
    theirs.save_pretrained(directory)
    theirs = theirs.to(device=device, dtype=dtype)
    ours = load_pretrained(directory).to(device=device, dtype=dtype)
    return theirs, ours


def hf_generate(model, prompt: torch.Tensor, n: int, use_cache: bool) -> torch.Tensor:
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=0,
    )


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def workloads(
    directory: Path, device: torch.device, dtype: torch.dtype, only: list[str] | None
) -> list[Work]:
    works: list[Work] = []

    def want(name: str) -> bool:
        return only is None or any(o in name for o in only)

    gen = torch.Generator().manual_seed(1)
    small_names = (
        "forward, 4 layers d256, batch 8 x 256",
        "forward + backward, same",
        "greedy generate 128 tokens with cache",
        "greedy generate 32 tokens without cache",
    )
    if any(want(n) for n in small_names):
        theirs, ours = build_pair(SMALL, directory / "small", device, dtype)
        ids = torch.randint(0, SMALL["vocab_size"], (8, 256), generator=gen).to(device)
        prompt = torch.randint(0, SMALL["vocab_size"], (1, 16), generator=gen).to(device)

        @torch.no_grad()
        def fwd_ours():
            return ours(ids)

        @torch.no_grad()
        def fwd_theirs():
            return theirs(ids).logits

        # The gradients are dropped after each step, so that the rows after this one run in a process
        # that holds no leftover buffers (their allocations then slow every later row).
        def train_ours():
            next_token_ce(ours(ids), ids).backward()
            ours.zero_grad(set_to_none=True)

        def train_theirs():
            next_token_ce(theirs(ids).logits, ids).backward()
            theirs.zero_grad(set_to_none=True)

        def same(a: torch.Tensor, b: torch.Tensor) -> bool:
            return torch.equal(a.cpu(), b.cpu())

        works += [
            Work(small_names[0], fwd_ours, fwd_theirs),
            Work(small_names[1], train_ours, train_theirs),
            Work(
                small_names[2],
                lambda: generate(ours, prompt, 128),
                lambda: hf_generate(theirs, prompt, 128, True),
                same,
            ),
            Work(
                small_names[3],
                lambda: generate(ours, prompt, 32, use_cache=False),
                lambda: hf_generate(theirs, prompt, 32, False),
                same,
            ),
        ]
    big_names = ("gpt2-small forward, batch 1 x 64", "gpt2-small greedy generate 32 tokens with cache")
    if any(want(n) for n in big_names):
        theirs, ours = build_pair(GPT2_SMALL, directory / "gpt2-small", device, dtype)
        ids = torch.randint(0, 50257, (1, 64), generator=gen).to(device)
        prompt = torch.randint(0, 50257, (1, 8), generator=gen).to(device)
        works += [
            Work(
                big_names[0], torch.no_grad()(lambda: ours(ids)), torch.no_grad()(lambda: theirs(ids).logits)
            ),
            Work(
                big_names[1],
                lambda: generate(ours, prompt, 32),
                lambda: hf_generate(theirs, prompt, 32, True),
                lambda a, b: torch.equal(a.cpu(), b.cpu()),
            ),
        ]
    tiny_names = (
        f"tiny preset, greedy {TINY_NEW_TOKENS} from 1 token, cached",
        f"tiny preset, greedy {TINY_NEW_TOKENS} from 1 token, recomputed",
    )
    if any(want(n) for n in tiny_names):
        theirs, ours = build_pair(TINY, directory / "tiny", device, dtype)
        prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
        works += [
            Work(
                name,
                lambda cache=cache: generate(ours, prompt, TINY_NEW_TOKENS, use_cache=cache),
                lambda cache=cache: hf_generate(theirs, prompt, TINY_NEW_TOKENS, cache),
                lambda a, b: torch.equal(a.cpu(), b.cpu()),
            )
            for name, cache in zip(tiny_names, (True, False))
        ]
    return [w for w in works if want(w.name)]


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float, object]:
    """Wall-clock seconds, this process's CPU seconds (steadier on a machine shared with other work,
    where wall time also counts the time another process held the core), and the output."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def compare(work: Work, repeats: int, device: torch.device) -> tuple[float, float, bool, float, float]:
    """Best wall seconds of each side over `repeats` interleaved runs (after one warm-up each), whether
    the outputs agree, and the best CPU seconds of each side."""
    outs = {"ours": work.ours(), "theirs": work.theirs()}  # warm-up: allocations, kernel choice
    best = {"ours": float("inf"), "theirs": float("inf")}
    best_cpu = dict(best)
    for r in range(repeats):
        order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
        for side in order:
            seconds, cpu, outs[side] = timed(getattr(work, side), device)
            best[side] = min(best[side], seconds)
            best_cpu[side] = min(best_cpu[side], cpu)
    agree = work.same is None or work.same(outs["ours"], outs["theirs"])
    return best["ours"], best["theirs"], agree, best_cpu["ours"], best_cpu["theirs"]


ROWS = (
    "forward, 4 layers d256, batch 8 x 256",
    "forward + backward, same",
    "greedy generate 128 tokens with cache",
    "greedy generate 32 tokens without cache",
    "gpt2-small forward, batch 1 x 64",
    "gpt2-small greedy generate 32 tokens with cache",
    f"tiny preset, greedy {TINY_NEW_TOKENS} from 1 token, cached",
    f"tiny preset, greedy {TINY_NEW_TOKENS} from 1 token, recomputed",
)


def _threads_label(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}" if threads else "default threads"


def kv_cache_speedups(rows: dict, threads: list[int]) -> str | None:
    """Each library's own speed-up from its KV cache on the tiny preset (recomputed time / cached time),
    when both tiny rows ran: what the cache buys at a size where a step's fixed cost is most of it."""
    cached, recomputed = ROWS[-2], ROWS[-1]
    if not all((name, t) in rows for name in (cached, recomputed) for t in threads):
        return None

    def speedups(side: str) -> str:
        return ", ".join(
            f"{rows[recomputed, t][side] / rows[cached, t][side]:.1f}x on {_threads_label(t)}"
            for t in threads
        )

    return (
        f"KV-cache speed-up (recomputed / cached wall time), tiny preset, {TINY_NEW_TOKENS} new tokens from a "
        f"one-token prompt: companion {speedups('ours')}; transformers {speedups('theirs')}"
    )


def measure_row(name: str, threads: int, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One row at one thread count, in this process (run_row starts a fresh process for it)."""
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        (work,) = [w for w in workloads(Path(tmp), device, dtype, [name]) if w.name == name]
        gc.collect()
        ours, theirs, agree, ours_cpu, theirs_cpu = compare(work, repeats, device)
    return dict(
        ours=ours, theirs=theirs, agree=agree, ours_cpu=ours_cpu, theirs_cpu=theirs_cpu, same=bool(work.same)
    )


def run_row(name: str, threads: int, args: argparse.Namespace) -> dict:
    """measure_row in a fresh process, under a hard time limit. In one process, the buffers an earlier
    row allocated (gpt2-small's above all) slowed later rows of both libraries many times over (128
    cached tokens of the small model took 5.3 s instead of 0.2 s), which no ratio should rest on."""
    command = [
        sys.executable,
        __file__,
        "--row",
        name,
        "--threads",
        str(threads),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.row_limit)
    if done.returncode != 0:
        raise RuntimeError(f"the row {name!r} @ {threads} threads failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch CPU thread counts to run (0: leave torch's choice)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per row; the best counts")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only the rows whose name contains one of these"
    )
    parser.add_argument("--row-limit", type=int, default=900, help="seconds one row may take before it fails")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # one row, in this process (run_row)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.row is not None:
        print(json.dumps(measure_row(args.row, args.threads[0], args.repeats, device, dtype)))
        return 0
    names = [n for n in ROWS if args.only is None or any(o in n for o in args.only)]
    rows = {}
    for threads in args.threads:
        for name in names:
            r = rows[name, threads] = run_row(name, threads, args)
            print(
                f"{name} @ {threads or 'default'} threads: {r['ours'] / r['theirs']:.2f} ({r['ours'] * 1e3:.1f} / "
                f"{r['theirs'] * 1e3:.1f} ms), CPU time {r['ours_cpu'] / r['theirs_cpu']:.2f}"
                f"{'' if r['agree'] else ', tokens differ'}",
                file=sys.stderr,
                flush=True,
            )
    failed = not all(r["agree"] for r in rows.values())
    import transformers

    label = {t: _threads_label(t) for t in args.threads}
    for title, key in (("wall-clock", ""), ("CPU", "_cpu")):
        print(
            f"companion / transformers {transformers.__version__}, {title} time on {device.type} {args.dtype}, torch "
            f"{torch.__version__.split('+')[0]}, best of {args.repeats}, interleaved, each row in its own "
            "process (below 1: the companion is faster)"
        )
        print(f"| {'work':<48} |" + "".join(f" {label[t]:>15} |" for t in args.threads) + " same tokens |")
        print("|" + "-" * 50 + "|" + "".join("-" * 17 + "|" for _ in args.threads) + "-------------|")
        for name in names:
            cells = "".join(
                f" {rows[name, t]['ours' + key] / rows[name, t]['theirs' + key]:>15.2f} |"
                for t in args.threads
            )
            agree = all(rows[name, t]["agree"] for t in args.threads)
            same = rows[name, args.threads[0]]["same"]
            print(f"| {name:<48} |{cells} {('yes' if agree else 'NO') if same else '':>11} |")
    print(
        "wall seconds (companion / transformers): "
        + "; ".join(
            f"{name} @{t}: {r['ours'] * 1e3:.1f} / {r['theirs'] * 1e3:.1f} ms"
            for (name, t), r in rows.items()
        )
    )
    kv_line = kv_cache_speedups(rows, args.threads)
    if kv_line:
        print(kv_line)
    if failed:
        print("greedy tokens differ between the companion and transformers", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
