"""benchmarks/bench_vs_hf.py: the KV-cache summary line, and the tiny preset's rows run end to end against
`transformers` (from the test extras) on weights the script makes itself, so nothing is downloaded."""

import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_vs_hf  # a script, not a module of the package: found through the path set above

CACHED, RECOMPUTED = bench_vs_hf.ROWS[-2], bench_vs_hf.ROWS[-1]


def row(ours: float, theirs: float) -> dict:
    return dict(ours=ours, theirs=theirs, agree=True, ours_cpu=ours, theirs_cpu=theirs, same=True)


def test_kv_cache_speedups_divides_recomputed_by_cached_for_each_library_and_thread_count():
    rows = {
        (CACHED, 1): row(0.25, 0.40),
        (RECOMPUTED, 1): row(1.00, 1.10),
        (CACHED, 2): row(0.20, 0.50),
        (RECOMPUTED, 2): row(0.70, 1.00),
    }
    line = bench_vs_hf.kv_cache_speedups(rows, [1, 2])
    assert "companion 4.0x on 1 thread, 3.5x on 2 threads" in line
    assert "transformers 2.8x on 1 thread, 2.0x on 2 threads" in line


def test_kv_cache_speedups_is_left_out_when_a_row_did_not_run():
    assert bench_vs_hf.kv_cache_speedups({(CACHED, 1): row(0.25, 0.4)}, [1]) is None
    rows = {(CACHED, 1): row(0.25, 0.4), (RECOMPUTED, 1): row(1.0, 1.1)}
    assert bench_vs_hf.kv_cache_speedups(rows, [1, 2]) is None


def test_the_tiny_rows_run_against_transformers_with_identical_tokens():
    pytest.importorskip("transformers")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_vs_hf.py")]
        + ["--only", "tiny preset", "--threads", "1", "--repeats", "1", "--row-limit", "200"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| tiny preset")]
    assert len(table) == 4 and all(line.rstrip(" |").endswith("yes") for line in table), done.stdout
    assert "KV-cache speed-up" in done.stdout and "companion" in done.stdout
