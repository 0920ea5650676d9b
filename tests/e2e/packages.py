"""The packages the e2e tests install: built once per source state by packaging/build.py (cached and locked
across test sessions and `make packages`)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _load_build_module() -> Any:
    """packaging/build.py (not a package): its cache location and the project's version."""
    spec = importlib.util.spec_from_file_location("kuma_vm_packaging_build", REPO / "packaging/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pkgbuild = _load_build_module()


def dist_dir() -> Path:
    return Path(pkgbuild.cache_root()) / "e2e-dist"


# The releases the e2e tests install (test_packages.py upgrades 1 to 2), built together from one staging.
RELEASES = ("1", "2")


def build_release(release: str) -> dict[str, Path]:
    """Packages of `release` (one of RELEASES) in dist_dir(), by name: {"kuma-cp.deb": path, ...}."""
    assert release in RELEASES, release
    dist = dist_dir()
    proc = subprocess.run([sys.executable, str(REPO / "packaging/build.py"), "--out", str(dist),
                           "--release", ",".join(RELEASES)], cwd=REPO, text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, f"packaging/build.py --release {release} failed:\n{proc.stdout}\n{proc.stderr}"
    built = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    files = next(b["files"] for b in built if b["release"] == release)
    found: dict[str, Path] = {}
    for name in files:
        pkg = "kuma-cp" if name.startswith("kuma-cp") else "kuma-dp"
        found[f"{pkg}.{name.rsplit('.', 1)[1]}"] = dist / name
    return found
