"""`torch.compile` on the companion: graph breaks, compile time, and compiled / eager time.

    .venv/bin/python benchmarks/bench_compile.py                 # tiny preset, CPU, inductor
    .venv/bin/python benchmarks/bench_compile.py --backend aot_eager --threads 1
    python benchmarks/bench_compile.py --device cuda --preset gpt2-small   # on a GPU (bf16 autocast)

Three pieces of work, each compiled with fullgraph=True (a graph break would be an error):
the forward pass, a training step (forward, loss, backward, AdamW), and cached greedy decoding
through `generate`. Graph breaks are counted by `torch._dynamo.explain` first. Compile time is
the first call's time minus an eager call's; the ratio is the best of the repeats, compiled over
eager (below 1: compiling pays). Decoding is run at two lengths to show it compiles once per
shape kind (prompt, then one token), not once per length.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from companion import build_model, generate, presets
from companion.device import autocast, describe, pick_device
from companion.training import next_token_loss


def seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class CountingBackend:
    """A torch.compile backend that counts the graphs it is handed, then passes them to a real one."""

    def __init__(self, backend: str):
        from torch._dynamo import lookup_backend

        self.inner, self.graphs = lookup_backend(backend), 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return self.inner(gm, example_inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="tiny", choices=[k for k, c in presets.items() if c.kind == "decoder"]
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64, help="decode length (a second run uses half)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    config = presets[args.preset]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
    prompt = torch.randint(0, config.vocab_size, (1, 1), generator=gen).to(device)
    print(
        f"preset {args.preset}, batch {args.batch} x {args.seq}, decode {args.new_tokens} tokens; "
        f"{describe(device)}; backend {args.backend}; {torch.get_num_threads()} CPU threads"
    )

    eager = build_model(config).to(device)
    breaks = {}
    with autocast(device):
        explained = torch._dynamo.explain(eager)(ids)
        breaks["forward"] = explained.graph_break_count
        explained = torch._dynamo.explain(lambda x: next_token_loss(eager(x), x))(ids)
        breaks["training step (forward + loss)"] = explained.graph_break_count
    torch._dynamo.reset()

    rows = []

    def measure(name: str, run_eager, run_compiled, counter: CountingBackend) -> None:
        run_eager()  # warm-up
        first_eager = seconds(run_eager, device)
        first = seconds(run_compiled, device)
        best_c, best_e = float("inf"), float("inf")
        for r in range(args.repeats):
            for side in ("c", "e") if r % 2 == 0 else ("e", "c"):
                if side == "c":
                    best_c = min(best_c, seconds(run_compiled, device))
                else:
                    best_e = min(best_e, seconds(run_eager, device))
        rows.append(
            (
                name,
                breaks.get(name, "-"),
                counter.graphs,
                first - first_eager,
                best_c / best_e,
                best_e,
                best_c,
            )
        )

    # forward
    eager.eval()
    counter = CountingBackend(args.backend)
    compiled = torch.compile(eager, fullgraph=True, backend=counter)
    with torch.no_grad(), autocast(device):
        measure("forward", lambda: eager(ids), lambda: compiled(ids), counter)

    # training step: the compiled model's forward and backward, AdamW outside
    train_model = build_model(config).to(device).train()
    twin = build_model(config).to(device).train()
    twin.load_state_dict(train_model.state_dict())
    counter = CountingBackend(args.backend)
    compiled_train = torch.compile(train_model, fullgraph=True, backend=counter)
    opt_c = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
    opt_e = torch.optim.AdamW(twin.parameters(), lr=1e-4)

    def step(model, opt):
        with autocast(device):
            loss = next_token_loss(model(ids), ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    measure(
        "training step (forward + loss)",
        lambda: step(twin, opt_e),
        lambda: step(compiled_train, opt_c),
        counter,
    )

    # cached greedy decoding, at two lengths: the second must not compile again
    eager.eval()
    torch._dynamo.reset()
    counter = CountingBackend(args.backend)
    compiled_dec = torch.compile(eager, fullgraph=True, backend=counter)
    same = torch.equal(
        generate(compiled_dec, prompt, args.new_tokens), generate(eager, prompt, args.new_tokens)
    )
    graphs_first = counter.graphs
    generate(compiled_dec, prompt, args.new_tokens // 2)
    recompiled = counter.graphs - graphs_first
    counter.graphs = 0
    torch._dynamo.reset()
    compiled_dec = torch.compile(eager, fullgraph=True, backend=counter)
    measure(
        f"cached greedy generate, {args.new_tokens} tokens",
        lambda: generate(eager, prompt, args.new_tokens),
        lambda: generate(compiled_dec, prompt, args.new_tokens),
        counter,
    )

    print(
        f"| {'work':<34} | graph breaks | graphs | compile time | compiled / eager | eager ms | compiled ms |"
    )
    print(f"|{'-' * 36}|--------------|--------|--------------|------------------|----------|-------------|")
    for name, nbreaks, graphs, compile_s, ratio, e, c in rows:
        print(
            f"| {name:<34} | {nbreaks!s:>12} | {graphs:>6} | {compile_s:>10.1f} s | {ratio:>16.2f} | "
            f"{e * 1e3:>8.1f} | {c * 1e3:>11.1f} |"
        )
    print(
        f"decoding: compiled tokens equal eager: {'yes' if same else 'NO'}; graphs compiled for "
        f"{args.new_tokens} tokens: {graphs_first}; more for a second length ({args.new_tokens // 2}): {recompiled}"
    )
    ok = same and recompiled == 0 and all(isinstance(b, str) or b == 0 for b in breaks.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
