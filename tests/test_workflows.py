"""The GitHub Actions workflow: valid against GitHub's workflow schema, running the README's test command
with .ci/run's torch pin, and publishing the site to GitHub Pages from main only.

The schema is the one check-jsonschema vendors (offline). actionlint checks more (expressions, the
shell in `run:`), but its PyPI package downloads a binary while installing, so it is a pre-commit
hook that contributors run online (`pre-commit run --hook-stage manual actionlint --all-files`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
MAIN_PUSH = "github.event_name == 'push' && github.ref == 'refs/heads/main'"


def schema_check(*paths: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=120)


def load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def test_the_workflows_match_githubs_schema():
    assert [p.name for p in WORKFLOWS] == ["ci.yml"]
    result = schema_check(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "break_it, says",
    [
        (lambda w: w["jobs"]["test"].pop("runs-on"), "'runs-on' is a required property"),
        (lambda w: w["jobs"]["test"]["steps"][0].update(run="echo both"), "is not valid under any"),
        (lambda w: w["jobs"]["pages"]["permissions"].update(pages="writ"), "'writ' is not one of"),
        (lambda w: w.update(on=["push", "pushh"]), "'pushh' is not one of"),
    ],
    ids=["job without runs-on", "step with uses and run", "unknown permission level", "unknown event"],
)
def test_a_broken_workflow_is_rejected(tmp_path, break_it, says):
    workflow = load(ROOT / ".github" / "workflows" / "ci.yml")
    break_it(workflow)
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(workflow, sort_keys=False))
    result = schema_check(broken)
    assert result.returncode != 0
    assert says in result.stdout + result.stderr


def test_every_push_and_pull_request_runs_the_readme_test_command_with_the_ci_torch_pin():
    workflow = load(ROOT / ".github" / "workflows" / "ci.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    assert workflow["permissions"] == {"contents": "read"}  # least privilege; the Pages job asks for more
    runs = [step.get("run", "") for step in workflow["jobs"]["test"]["steps"]]
    assert "bash .ci/run" in runs  # the same script, so the same torch pin, as the course's own CI
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert 'echo "torch==' in ci_run and "\nmake test\n" in ci_run
    assert "make test" in (ROOT / "README.md").read_text()
    step = next(s for s in workflow["jobs"]["test"]["steps"] if s.get("run") == "bash .ci/run")
    assert step["env"]["PIP_EXTRA_INDEX_URL"].endswith("/whl/cpu")  # that pin without the CUDA libraries


def test_the_site_is_published_to_pages_from_main_only():
    jobs = load(ROOT / ".github" / "workflows" / "ci.yml")["jobs"]
    upload = next(
        s for s in jobs["test"]["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@")
    )
    assert upload["if"] == MAIN_PUSH
    assert upload["with"]["path"] == "_build/html"
    assert (
        "The book is built: open _build/html/index.html" in (ROOT / "Makefile").read_text()
    )  # make book's output
    pages = jobs["pages"]
    assert pages["needs"] == "test" and pages["if"] == MAIN_PUSH
    assert pages["permissions"] == {"pages": "write", "id-token": "write"}
    assert pages["environment"]["name"] == "github-pages"
    assert pages["concurrency"]["cancel-in-progress"] is False  # a deployment is never cut off halfway
    assert [s["uses"].split("@")[0] for s in pages["steps"]] == ["actions/deploy-pages"]
