"""The pre-commit hooks: a valid configuration whose default hooks run offline from the course's .venv,
strip outputs from exercises/ and never from solutions/ (nbval checks their stored outputs).

pre-commit is in the test extra, so this runs wherever the suite runs: a configuration that stopped
parsing, or a hook pointing at a tool the venv lacks, fails here rather than on a contributor's commit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

import strip_outputs
from helpers import ROOT, TOOLS

CONFIG = ROOT / ".pre-commit-config.yaml"
HOOKS = {hook["id"]: hook for repo in yaml.safe_load(CONFIG.read_text())["repos"] for hook in repo["hooks"]}


def pre_commit(*args: str, cwd: Path = ROOT, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRE_COMMIT_HOME": str(home)} if home else None
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_configuration_is_valid_and_a_broken_one_is_not(tmp_path):
    result = pre_commit("validate-config", str(CONFIG), home=tmp_path / "home")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(CONFIG.read_text())
    del config["repos"][0]["hooks"][0]["entry"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    result = pre_commit("validate-config", str(broken), home=tmp_path / "home")
    assert result.returncode != 0
    assert "Missing required key: entry" in result.stdout + result.stderr


def test_every_default_hook_is_local_and_runs_from_the_venv():
    """Offline: no hook that runs by default has pre-commit download anything."""
    config = yaml.safe_load(CONFIG.read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    default = {name: hook for name, hook in HOOKS.items() if "manual" not in hook.get("stages", [])}
    assert set(default) >= {"ruff-check", "ruff-format", "strip-exercise-outputs", "exercises-in-sync"}
    for name, hook in default.items():
        assert hook["language"] == "system", name
        program, *args = hook["entry"].split()
        assert program.startswith(".venv/bin/"), name
        assert (Path(sys.executable).parent / Path(program).name).exists(), (
            f"{name}: {program} is not installed"
        )
        scripts = [ROOT / arg for arg in args if arg.endswith(".py")]
        assert all(script.exists() for script in scripts), name
    assert HOOKS["actionlint"]["stages"] == ["manual"]  # online only: its package downloads a binary


def test_outputs_are_stripped_from_exercises_and_never_from_solutions():
    strip, sync = (
        re.compile(HOOKS["strip-exercise-outputs"]["files"]),
        re.compile(HOOKS["exercises-in-sync"]["files"]),
    )
    exercises = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "exercises").glob("*.ipynb"))
    solutions = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "solutions").glob("*.ipynb"))
    assert exercises and solutions
    assert all(strip.search(p) for p in exercises)
    assert not any(strip.search(p) for p in solutions)
    assert all(sync.search(p) for p in exercises + solutions + ["tools/make_exercises.py"])


def ran_in_jupyter(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as Jupyter saves it after a run: outputs, counts, widget state, cell timings."""
    for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = count + 1
        cell.outputs = [nbformat.v4.new_output("stream", text=f"output {count}\n")]
        cell.metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


def test_stripping_gives_back_the_generated_exercise(tmp_path):
    generated = ROOT / "exercises" / "02_attention.ipynb"
    path = tmp_path / "exercises" / generated.name
    path.parent.mkdir()
    path.write_text(nbformat.writes(ran_in_jupyter(nbformat.read(generated, as_version=4))))
    assert path.read_text() != generated.read_text()
    assert strip_outputs.main([str(path)]) == 1  # changed a file: the commit stops so it can be looked at
    assert path.read_text() == generated.read_text()
    assert strip_outputs.main([str(path)]) == 0


def test_a_solutions_notebook_is_refused(tmp_path, capsys):
    path = tmp_path / "solutions" / "02_attention.ipynb"
    path.parent.mkdir()
    shutil.copy(ROOT / "solutions" / path.name, path)
    before = path.read_text()
    assert strip_outputs.main([str(path)]) == 2
    assert "keep their outputs" in capsys.readouterr().err
    assert path.read_text() == before


def test_the_hooks_run_on_a_commit(tmp_path):
    """pre-commit itself, in a scratch repository: the strip hook fixes a run exercise, ruff stops a bug."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "exercises").mkdir()
    shutil.copy(CONFIG, repo / CONFIG.name)
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    for script in ("strip_outputs.py", "make_exercises.py"):
        shutil.copy(TOOLS / script, repo / "tools" / script)
    (repo / ".venv").symlink_to(Path(sys.executable).parent.parent)
    generated = ROOT / "exercises" / "02_attention.ipynb"
    exercise = repo / "exercises" / generated.name
    exercise.write_text(nbformat.writes(ran_in_jupyter(nbformat.read(generated, as_version=4))))
    (repo / "broken.py").write_text("import os\n")  # an unused import: F401
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True, timeout=60)
    subprocess.run([*git, "add", "."], cwd=repo, check=True, timeout=60)
    home = tmp_path / "pre-commit-home"
    hooks = ["strip-exercise-outputs", "ruff-check"]
    results = {hook: pre_commit("run", hook, "--all-files", cwd=repo, home=home) for hook in hooks}
    assert results["strip-exercise-outputs"].returncode == 1
    assert f"stripped outputs from exercises/{generated.name}" in results["strip-exercise-outputs"].stdout
    assert exercise.read_text() == generated.read_text()
    assert results["ruff-check"].returncode == 1
    assert "F401" in results["ruff-check"].stdout
    assert pre_commit("run", "strip-exercise-outputs", "--all-files", cwd=repo, home=home).returncode == 0
