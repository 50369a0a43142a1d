"""Execute notebooks, each in its own process with a hard wall-clock limit, one thread per kernel.

    python tools/run_notebooks.py solutions/02_attention.ipynb [...]        # store outputs in place
    python tools/run_notebooks.py --cache _build/.jupyter_cache book/*.md   # fill the book's cache

This is the one way notebooks are executed outside nbval: `make solutions` stores the outputs that
nbval checks, and `make book` executes every chapter here first, into the jupyter-cache that
Jupyter Book then reads (so Sphinx itself executes nothing). Each notebook runs in a child process
that is killed, with its kernel, once `--limit` seconds pass: a kernel that stops answering fails
the run within minutes, naming the notebook and the cell it was in, instead of stalling the build.

Kernels run with one thread (OMP_NUM_THREADS=1), as the notebook tests do: sums then add up in the
same order on every machine, and two kernels side by side on two cores do not fight over threads.

A notebook that fails or times out is left untouched on disk (and out of the cache); the reason is
printed, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil

from with_limit import kill_tree

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """An .ipynb as stored, or a MyST-Markdown page read the way myst-nb reads it (so the cache matches)."""
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    return read_myst_markdown_notebook(
        path.read_text(encoding="utf-8"), MdParserConfig(), add_source_map=True
    )


# ---------------------------------------------------------------------------------------------------
# The child: executes one notebook, reporting each cell it starts in a progress file.


POLL_SLICE = 1.0  # seconds: the longest a missed wake-up can delay a message


def poll_in_slices(channel) -> None:
    """Make `channel.get_msg(timeout)` wait in one-second slices instead of one long poll.

    The async client's wait on a zmq socket can miss its wake-up: the kernel has replied and gone
    idle, the reply sits in the socket, and the client sleeps on until the poll times out (seen
    here with pyzmq 27 and jupyter_client 8, with ipykernel 6 and 7 alike: a cell that drives
    widgets stalled for the whole cell timeout, then carried on). Each slice ends with a plain
    check of the socket, so a missed wake-up costs at most a second, and the overall timeout
    still holds.
    """
    from queue import Empty

    wait = channel.get_msg

    async def get_msg(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE if deadline is None else max(0.0, min(POLL_SLICE, deadline - time.monotonic()))
            try:
                return await wait(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = get_msg


def _child(source: Path, out: Path, progress: Path, cell_timeout: int) -> int:
    from nbclient import NotebookClient

    class Client(NotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel, kc.control_channel):
                poll_in_slices(channel)
            return kc

    nb = read_notebook(source)

    def on_cell_start(cell, cell_index):
        if cell.cell_type != "code":
            return
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        note = {"cell": cell_index, "cells": len(nb.cells), "first_line": first[:100], "started": time.time()}
        tmp = progress.with_suffix(".tmp")
        tmp.write_text(json.dumps(note))
        tmp.replace(progress)

    client = Client(
        nb,
        timeout=cell_timeout,
        kernel_name="python3",
        allow_errors=False,
        record_timing=False,
        resources={"metadata": {"path": str(source.parent)}},
        on_cell_start=on_cell_start,
    )
    client.execute()
    nbformat.write(nb, out)
    return 0


# ---------------------------------------------------------------------------------------------------
# The parent: starts children, enforces the limit, kills a stuck child and its kernel.


OUT, PROGRESS, LOG = "executed.ipynb", "progress.json", "child.log"  # in each child's temporary folder


@dataclass
class Run:
    path: Path
    proc: subprocess.Popen
    workdir: tempfile.TemporaryDirectory
    started: float = field(default_factory=time.monotonic)

    @property
    def out(self) -> Path:
        return Path(self.workdir.name) / OUT

    @property
    def progress(self) -> Path:
        return Path(self.workdir.name) / PROGRESS

    @property
    def log(self) -> Path:
        return Path(self.workdir.name) / LOG

    def where(self) -> str:
        """The cell the child was executing, from its progress file."""
        try:
            note = json.loads(self.progress.read_text())
        except (OSError, ValueError):
            return "before its first cell (kernel start-up)"
        ago = time.time() - note["started"]
        return (
            f"in cell {note['cell']} of {note['cells']} (started {ago:.0f} s ago), "
            f"which begins: {note['first_line']!r}"
        )


def busy_state(pid: int) -> str:
    """Whether the processes under `pid` (the kernel among them) are computing or idle, over one second."""
    try:
        procs = psutil.Process(pid).children(recursive=True)
        before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        time.sleep(1.0)
        after = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    except psutil.Error:
        return "gone"
    return f"{100 * (after - before):.0f}% CPU over the last second"


def start(path: Path, cell_timeout: int, threads: int) -> Run:
    workdir = tempfile.TemporaryDirectory(prefix="run-notebook-")
    folder = Path(workdir.name)
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    env.pop("MPLBACKEND", None)  # kernels keep matplotlib's inline backend, or figures vanish
    with open(folder / LOG, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                str(path),
                str(folder / OUT),
                str(folder / PROGRESS),
                str(cell_timeout),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Run(path, proc, workdir)


def finish(run: Run, cache_dir: Path | None, store: bool) -> str | None:
    """Store a finished child's result; returns an error message, or None on success."""
    if run.proc.returncode != 0 or not run.out.exists():
        log = run.log.read_text(errors="replace")
        return f"failed {run.where()}\n{log[-4000:]}"
    nb = nbformat.read(run.out, as_version=4)
    elapsed = time.monotonic() - run.started
    if not store:
        return None
    if cache_dir is not None:
        from jupyter_cache import get_cache
        from jupyter_cache.base import CacheBundleIn

        get_cache(str(cache_dir)).cache_notebook_bundle(
            CacheBundleIn(nb, str(run.path.resolve()), data={"execution_seconds": elapsed}),
            check_validity=False,
            overwrite=True,
        )
    elif run.path.suffix == ".ipynb":
        tmp = Path(tempfile.mkstemp(prefix=f".{run.path.name}.", suffix=".tmp", dir=run.path.parent)[1])
        try:
            nbformat.write(nb, tmp)
            tmp.replace(run.path)
        finally:
            tmp.unlink(missing_ok=True)
    return None


def is_cached(path: Path, cache_dir: Path) -> bool:
    from jupyter_cache import get_cache

    try:
        get_cache(str(cache_dir)).match_cache_notebook(read_notebook(path))
    except KeyError:
        return False
    return True


def run_all(
    paths: list[Path],
    *,
    jobs: int = 1,
    limit: int = 900,
    cell_timeout: int = 600,
    cache_dir: Path | None = None,
    store: bool = True,
    threads: int = 1,
    log=print,
) -> dict[Path, str | None]:
    """Execute each notebook (at most `jobs` at once); returns {path: None on success, else the error}.

    With `store`, a notebook that succeeds is written back in place (an .ipynb) or into `cache_dir`;
    without it the executed notebooks are discarded (a dry run, as the stress test uses).
    """
    results: dict[Path, str | None] = {}
    waiting = list(paths)
    if cache_dir is not None and store:
        for path in list(waiting):
            if is_cached(path, cache_dir):
                log(f"{path}: unchanged since its last run, outputs taken from the cache")
                results[path] = None
                waiting.remove(path)
    running: list[Run] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            running.append(start(waiting.pop(0), cell_timeout, threads))
        time.sleep(0.2)
        for run in list(running):
            elapsed = time.monotonic() - run.started
            if run.proc.poll() is None and elapsed > limit:
                where, busy = run.where(), busy_state(run.proc.pid)
                kill_tree(run.proc.pid)
                results[run.path] = (
                    f"killed after {limit} s, the limit for one notebook; it was {where}; "
                    f"its kernel was using {busy}"
                )
            elif run.proc.poll() is not None:
                results[run.path] = finish(run, cache_dir, store)
            else:
                continue
            running.remove(run)
            run.workdir.cleanup()
            error = results[run.path]
            if error is None:
                log(f"{run.path}: executed in {elapsed:.1f} s")
            else:
                log(f"{run.path}: FAILED, {error}")
    return results


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        source, out, progress, cell_timeout = argv[1:]
        return _child(Path(source), Path(out), Path(progress), int(cell_timeout))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path, help=".ipynb notebooks or MyST-Markdown pages")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1)")
    parser.add_argument(
        "--limit", type=int, default=900, help="wall-clock seconds for one notebook (default 900)"
    )
    parser.add_argument("--cell-timeout", type=int, default=600, help="seconds for one cell (default 600)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for each kernel (default 1, as stored outputs are written)",
    )
    parser.add_argument("--dry-run", action="store_true", help="execute and report, but store nothing")
    parser.add_argument("--cache", type=Path, help="store results in this jupyter-cache instead of in place")
    args = parser.parse_args(argv)
    for name, value in (
        ("--jobs", args.jobs),
        ("--limit", args.limit),
        ("--cell-timeout", args.cell_timeout),
        ("--threads", args.threads),
    ):
        if value < 1:
            parser.error(f"{name} must be a positive integer, got {value}")
    missing = [str(p) for p in args.paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    md_without_cache = [
        str(p) for p in args.paths if p.suffix != ".ipynb" and args.cache is None and not args.dry_run
    ]
    if md_without_cache:
        parser.error(
            f"a Markdown page has nowhere to keep its outputs; pass --cache DIR for {', '.join(md_without_cache)}"
        )
    results = run_all(
        args.paths,
        jobs=args.jobs,
        limit=args.limit,
        cell_timeout=args.cell_timeout,
        cache_dir=args.cache,
        store=not args.dry_run,
        threads=args.threads,
        log=lambda line: print(line, flush=True),
    )
    failed = [str(path) for path, error in results.items() if error is not None]
    if failed:
        print(f"{len(failed)} of {len(results)} notebooks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
