"""The build tools that keep a run honest: hard wall-clock limits, the notebook runner, the tree guard.

Each limit here is seen to fire: a test makes the stuck process and checks that it is killed, and
that the message names what was stuck.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

import run_notebooks
import tree_guard
import with_limit
from helpers import ROOT


def run_in_own_loop(coroutine):
    """asyncio.run() on a thread of its own, so a loop another test left running here cannot stop it."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


def write_notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)
    return path


def test_with_limit_kills_the_whole_tree_and_says_so(capsys):
    marker = f"sleep {int(time.time()) % 1000 + 1000}"  # a command line no other test runs
    start = time.monotonic()
    status = with_limit.main(["2", "bash", "-c", f"{marker} & {marker}; echo never"])
    assert status == 124 and time.monotonic() - start < 30
    assert "still running after 2 s" in capsys.readouterr().err
    time.sleep(0.5)
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and marker in " ".join(p.info["cmdline"])
    ]


def test_with_limit_passes_the_exit_status_through_and_rejects_bad_arguments(capsys):
    assert with_limit.main(["30", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert with_limit.main(["soon", "true"]) == 2
    assert "expected a positive number of seconds" in capsys.readouterr().err


def test_a_kernel_that_stops_answering_is_killed_and_named(tmp_path):
    # SIGSTOP freezes the kernel mid-cell: idle, never replying, as the ipykernel 7 hang looked.
    nb = write_notebook(
        tmp_path / "stuck.ipynb", "x = 1", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)"
    )
    before = nb.read_bytes()
    start = time.monotonic()
    results = run_notebooks.run_all([nb], limit=20, cell_timeout=600, log=lambda _line: None)
    assert time.monotonic() - start < 60
    error = results[nb]
    assert (
        error.startswith("killed after 20 s") and "in cell 1 of 2" in error and "import os, signal" in error
    )
    assert "0% CPU" in error
    assert nb.read_bytes() == before  # a failed run leaves the notebook as it was
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_failing_cell_is_reported_and_the_notebook_left_alone(tmp_path):
    nb = write_notebook(tmp_path / "broken.ipynb", "print('fine')", "raise ValueError('the third answer')")
    before = nb.read_bytes()
    error = run_notebooks.run_all([nb], limit=120, log=lambda _line: None)[nb]
    assert "ValueError" in error and "the third answer" in error
    assert nb.read_bytes() == before


def test_outputs_are_stored_with_one_thread_per_kernel(tmp_path):
    nb = write_notebook(tmp_path / "ok.ipynb", "import os\nprint(os.environ['OMP_NUM_THREADS'])")
    assert run_notebooks.run_all([nb], limit=120, log=lambda _line: None) == {nb: None}
    stored = nbformat.read(nb, as_version=4)
    assert stored.cells[0].outputs[0]["text"].strip() == "1"


def test_the_runner_rejects_bad_arguments():
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_notebooks.py"), "--jobs", "0", "nowhere.ipynb"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "--jobs must be a positive integer, got 0" in run.stderr


@pytest.fixture
def repo(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("*.pt\n_build/\n")
    (tmp_path / "kept.py").write_text("a = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    return tmp_path


def test_tree_guard_passes_an_untouched_tree_with_local_changes(repo):
    (repo / "kept.py").write_text("a = 2\n")  # a developer's own edit, made before the run
    assert tree_guard.main(["snapshot"], root=repo) == 0
    assert tree_guard.main(["check"], root=repo) == 0


@pytest.mark.parametrize(
    "mischief, named",
    [
        (lambda r: (r / "x").write_text(""), "added:   x"),
        (lambda r: (r / "model.pt").write_bytes(b"0"), "added:   model.pt"),  # ignored files count too
        (lambda r: (r / "kept.py").write_text("a = 3\n"), "changed: kept.py"),
        (lambda r: (r / "kept.py").unlink(), "kept.py"),
    ],
)
def test_tree_guard_names_what_a_run_wrote(repo, capsys, mischief, named):
    assert tree_guard.main(["snapshot"], root=repo) == 0
    mischief(repo)
    (repo / "_build" / "html").mkdir(parents=True)  # where a run may write
    (repo / "_build" / "html" / "index.html").write_text("ok")
    assert tree_guard.main(["check"], root=repo) == 1
    assert named in capsys.readouterr().err


def test_polling_in_slices_recovers_a_missed_wake_up_and_keeps_the_timeout():
    from queue import Empty

    class Channel:  # a socket whose first wait misses its wake-up: it sleeps the whole timeout
        calls = 0

        async def get_msg(self, timeout=None):
            Channel.calls += 1
            if Channel.calls == 1 or self.silent:
                await asyncio.sleep(timeout if timeout is not None else 3600)
                raise Empty
            return {"msg": "reply"}

    async def timed(channel, timeout):
        start = time.monotonic()
        try:
            return await channel.get_msg(timeout=timeout), time.monotonic() - start
        except Empty:
            return "empty", time.monotonic() - start

    missed = Channel()
    missed.silent = False
    run_notebooks.poll_in_slices(missed)
    reply, waited = run_in_own_loop(timed(missed, 600))
    assert reply == {"msg": "reply"} and waited < 5  # not the 600 s the single long poll would sleep

    silent = Channel()
    silent.silent = True
    run_notebooks.poll_in_slices(silent)
    reply, waited = run_in_own_loop(timed(silent, 2.5))
    assert reply == "empty" and 2.4 < waited < 10  # the overall timeout still holds


WIDGET_CELL = """import ipywidgets as w, matplotlib.pyplot as plt
from IPython.display import display
s, o = w.IntSlider(value=1, max=10), w.Output()
def redraw(change=None):
    with o:
        o.clear_output(wait=True)
        fig, ax = plt.subplots(figsize=(2, 1.5)); ax.plot(range(s.value + 2)); plt.show()
s.observe(redraw, names="value"); redraw(); display(w.VBox([s, o])); s.value = {i} % 10"""


def test_a_widget_heavy_notebook_does_not_stall(tmp_path):
    # Before the runner polled in slices, a notebook like this stalled in every run here (the
    # client slept through a reply until the cell timeout, 600 s, ran out), and a page with an
    # explorer stalled the book build. With the slices it takes 10-30 s; stalled, it is killed at 90.
    nb = write_notebook(tmp_path / "widgets.ipynb", *[WIDGET_CELL.replace("{i}", str(i)) for i in range(30)])
    results = run_notebooks.run_all([nb], limit=90, cell_timeout=600, store=False, log=lambda _line: None)
    assert results == {nb: None}


def test_nbval_cell_timeout_fires_and_names_the_cell(tmp_path):
    # The notebook tests rely on nbval's per-cell timeout (the Makefile's --nbval-cell-timeout); see it fire.
    nb = write_notebook(tmp_path / "slow.ipynb", "x = 1", "import time\ntime.sleep(120)", "print(2)")
    start = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "--nbval-cell-timeout=5",
            "-p",
            "no:cacheprovider",
            str(nb),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert time.monotonic() - start < 100
    assert (
        run.returncode == 1
        and "slow.ipynb::Cell 1" in run.stdout
        and "Timeout of 5 seconds exceeded" in run.stdout
    )
