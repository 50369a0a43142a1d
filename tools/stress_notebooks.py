"""Execute notebooks again and again while other processes load every core, and count what happens.

    python tools/stress_notebooks.py --repeat 20 --load 3 book/03_positions.md solutions/*.ipynb

Each execution goes through `run_notebooks.run_all` (own process, one thread, hard wall-clock limit),
so a kernel that stops answering is killed at `--limit` and counted as a hang, not waited on forever.
Nothing is written back: the executed notebooks are discarded. Used to show that the book build no
longer hangs (see the reliability notes in CONTRIBUTING.md).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run_notebooks import run_all
from with_limit import kill_tree

LOAD = "import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--repeat", type=int, default=10, help="executions of each notebook (default 10)")
    parser.add_argument("--load", type=int, default=2, help="busy processes running beside them (default 2)")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks executed at once (default 2)")
    parser.add_argument("--limit", type=int, default=300, help="seconds before one execution counts as hung")
    args = parser.parse_args(argv)
    loaders = [subprocess.Popen([sys.executable, "-c", LOAD]) for _ in range(args.load)]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    start = time.monotonic()
    try:
        for round_ in range(args.repeat):
            t0 = time.monotonic()
            results = run_all(
                args.paths,
                jobs=args.jobs,
                limit=args.limit,
                store=False,
                log=lambda line: print(line, flush=True),
            )
            for path, error in results.items():
                kind = "ok" if error is None else ("hung" if error.startswith("killed") else "error")
                counts[str(path)][kind] += 1
            print(f"round {round_ + 1}/{args.repeat} in {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        for proc in loaders:
            kill_tree(proc.pid)
    print(
        f"\n{'notebook':40} {'ok':>4} {'hung':>5} {'error':>6}   (load {args.load}, jobs {args.jobs}, "
        f"{time.monotonic() - start:.0f} s)"
    )
    for path, c in counts.items():
        print(f"{path:40} {c['ok']:4} {c['hung']:5} {c['error']:6}")
    return 1 if any(c["hung"] or c["error"] for c in counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
