"""Shared test setup: the build scripts in tools/ and the plain helpers in tests/helpers.py import by name.

Test files import them (`import run_notebooks`, `from helpers import ROOT`) instead of each one
putting tools/ on sys.path itself.
"""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for folder in (TESTS, TESTS.parent / "tools"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
