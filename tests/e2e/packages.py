"""The packages the e2e tests install: built once per source state by packaging/build.py (cached and locked
across test sessions and `make packages`)."""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
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
    if release == RELEASES[0]:  # the release the static checks look at (test_packages.py)
        lintian_in_background([dist / name for name in files if name.endswith(".deb")])
    found: dict[str, Path] = {}
    for name in files:
        pkg = "kuma-cp" if name.startswith("kuma-cp") else "kuma-dp"
        found[f"{pkg}.{name.rsplit('.', 1)[1]}"] = dist / name
    return found


# --- lintian -----------------------------------------------------------------------------------------------
# lintian takes ~50 s on the two .debs. It starts in the background (niced) as soon as they are built, the
# first thing the e2e modules do, and test_packages.py's lintian test takes its verdict. A verdict on the very
# same bytes (the overrides are inside) is kept in the build cache.

_lintian: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}  # digest -> (lintian, its output file)


def _digest(debs: list[Path]) -> str:
    h = hashlib.sha256()
    for deb in sorted(debs):
        h.update(deb.read_bytes())
    return h.hexdigest()[:16]


def _verdict_file(digest: str) -> Path:
    return dist_dir() / f".lintian-clean-{digest}"


def lintian_in_background(debs: list[Path]) -> None:
    """Start lintian on `debs` unless its verdict is kept or it already runs."""
    if shutil.which("lintian"):
        _start(debs, _digest(debs))


def _start(debs: list[Path], digest: str) -> None:
    if digest in _lintian or _verdict_file(digest).exists():
        return
    out = Path(tempfile.mkstemp(prefix="lintian-", suffix=".log")[1])
    with out.open("wb") as f:
        proc = subprocess.Popen(["nice", "-n", "19", "lintian", "--fail-on", "error", "--no-tag-display-limit",
                                 *map(str, sorted(debs))], stdout=f, stderr=subprocess.STDOUT)
    _lintian[digest] = (proc, out)
    atexit.register(_stop, proc, out)


def _stop(proc: subprocess.Popen[bytes], out: Path) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    out.unlink(missing_ok=True)


def lintian(debs: list[Path], timeout: float = 600) -> tuple[int, str]:
    """(exit status, output) of lintian on `debs`: the background run's, else one run now; (0, kept verdict)
    when the same bytes passed before."""
    digest = _digest(debs)  # ~100 MB read: once
    verdict = _verdict_file(digest)
    if verdict.exists():
        return 0, verdict.read_text()
    _start(debs, digest)
    proc, out = _lintian.pop(digest)
    code = proc.wait(timeout)
    text = out.read_text(errors="replace")
    out.unlink(missing_ok=True)
    if code == 0 and not any(line.startswith("E:") for line in text.splitlines()):
        for old in verdict.parent.glob(".lintian-clean-*"):
            old.unlink(missing_ok=True)
        verdict.write_text(text)
    return code, text
