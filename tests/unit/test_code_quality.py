"""The house rules, as CI checks them: ruff clean everywhere, mypy clean on the typed packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = BIN / tool
    if not path.exists():
        pytest.fail(f"{path} is missing: scripts/setup.sh installs it (the dev extra)")
    return subprocess.run([str(path), *args], cwd=REPO, text=True, capture_output=True, timeout=600,
                          env={**os.environ, "NO_COLOR": "1"})


def test_ruff_is_clean() -> None:
    proc = run("ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean_on_the_typed_packages() -> None:
    proc = run("mypy")  # pyproject.toml names the packages: controlplane, agent, kuma_shared
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
