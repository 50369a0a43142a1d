"""Run a command with a hard wall-clock limit, so nothing that waits on another process can stall CI.

    python tools/with_limit.py SECONDS COMMAND [ARG ...]

The command runs in its own session; once SECONDS pass it is killed with every process under it
(Jupyter kernels and browsers start their own sessions, so a process group is not enough), a line
naming the command and the limit is printed, and the exit status is 124, as GNU `timeout` gives.
Otherwise the command's own exit status is returned. Works wherever Python does (macOS has no
`timeout`).
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import psutil


def kill_tree(pid: int) -> None:
    """Kill a process and every descendant, then wait for them."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = parent.children(recursive=True) + [parent]
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        print(
            f"with_limit.py: expected a positive number of seconds and a command, got {argv!r}",
            file=sys.stderr,
        )
        return 2
    limit, command = int(argv[0]), argv[1:]
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        print(
            f"\nwith_limit.py: `{shlex.join(command)}` was still running after {limit} s, its hard limit; "
            "killed it and everything it started",
            file=sys.stderr,
            flush=True,
        )
        return 124
    except KeyboardInterrupt:
        kill_tree(proc.pid)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
