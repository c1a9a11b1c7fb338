"""`ray job submit --working-dir .` ships the checkout minus what .gitignore/.rayignore list. A virtual
environment inside the checkout that neither file lists is uploaded whole (hundreds of MB) and the submission
stalls past any timeout — this is what once broke CI, whose venv `.ci/run` creates inside the checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def venv_names() -> list[str]:
    """Every folder `.ci/run` creates with `python -m venv NAME`, plus the README's `.venv`."""
    names = re.findall(r"-m venv\s+(\S+)", (ROOT / ".ci" / "run").read_text())
    assert names, ".ci/run no longer creates a venv: update this test"
    return sorted({*names, ".venv"})


@pytest.mark.parametrize("name", venv_names())
def test_in_checkout_venvs_are_never_shipped_with_a_job(name: str) -> None:
    rayignore = [line.strip().rstrip("/") for line in (ROOT / ".rayignore").read_text().splitlines()]
    assert name in rayignore, f"{name}/ is missing from .rayignore"
    if (ROOT / ".git").exists():
        out = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"{name}/x"], cwd=ROOT)
        assert out.returncode == 0, f"{name}/ is not in .gitignore"
