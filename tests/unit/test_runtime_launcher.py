"""The runtime's launcher (packaging/runtime/python): which host Python it starts, and how.

The choice is checked against a made-up /usr/bin (the launcher's text with that directory replaced by a
temporary one whose python3.X print their own name); the start itself with this host's real /usr/bin/python3.X,
as a package runs it. The packages' own test (tests/e2e/test_packages.py) runs it on booted Debian 12 and 13.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LAUNCHER = Path(__file__).resolve().parents[2] / "packaging" / "runtime" / "python"


def runtime(tmp_path: Path, libs: list[str], host: list[str], default: str | None) -> Path:
    """A runtime with lib/python<v>/site-packages for `libs`, whose launcher looks in a made-up /usr/bin
    holding python<v> for `host` and python3 -> python<default>."""
    usr_bin = tmp_path / "usr-bin"
    usr_bin.mkdir()
    for version in host:
        fake = usr_bin / f"python{version}"
        fake.write_text('#!/bin/sh\necho "$0 $*"\n')
        fake.chmod(0o755)
    if default is not None:
        (usr_bin / "python3").symlink_to(f"python{default}")
    root = tmp_path / "opt" / "kuma-vm" / "kuma-dp"
    for version in libs:
        (root / "lib" / f"python{version}" / "site-packages").mkdir(parents=True)
    (root / "bin").mkdir(parents=True)
    launcher = root / "bin" / "python"
    launcher.write_text(LAUNCHER.read_text().replace("/usr/bin/", f"{usr_bin}/"))
    launcher.chmod(0o755)
    return root


def started(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(root / "bin" / "python"), "-I", "-c", "pass"], capture_output=True, text=True,
                          timeout=10)


def test_the_hosts_default_python_when_the_runtime_has_its_libraries(tmp_path: Path) -> None:
    root = runtime(tmp_path, libs=["3.11", "3.13"], host=["3.11", "3.13"], default="3.11")
    proc = started(root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == str(tmp_path / "usr-bin" / "python3.11")  # the default, not the newest
    assert proc.stdout.split()[1:] == ["-I", "-c", "pass"]  # the arguments passed on as they were


def test_else_the_newest_host_python_it_has_libraries_for(tmp_path: Path) -> None:
    # As on RHEL 9: python3 is a version the runtime has no libraries for, others are installed beside it.
    # 3.14's libraries have no interpreter on this host; 3.13 is newer than 3.9 as numbers, not as text.
    root = runtime(tmp_path, libs=["3.9", "3.11", "3.13", "3.14"], host=["3.9", "3.10", "3.11", "3.13"],
                   default="3.10")
    proc = started(root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == str(tmp_path / "usr-bin" / "python3.13")


def test_no_supported_python_names_the_versions_it_needs(tmp_path: Path) -> None:
    root = runtime(tmp_path, libs=["3.11", "3.13"], host=["3.9"], default="3.9")
    proc = started(root)
    assert proc.returncode == 127
    assert proc.stdout == ""
    assert proc.stderr.strip() == (f"kuma-vm: no supported Python on this host: kuma-dp needs {tmp_path}/usr-bin/"
                                   "python3.X for one of: 3.11 3.13")


HOST_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")


@pytest.mark.skipif(not HOST_PYTHON.exists(), reason=f"{HOST_PYTHON} (the host's Python) is not installed")
@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_the_host_python_runs_as_the_runtimes_virtual_environment(tmp_path: Path, how: str) -> None:
    root = tmp_path / "opt" / "kuma-vm" / "kuma-dp"
    (root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "python").write_bytes(LAUNCHER.read_bytes())
    (root / "bin" / "python").chmod(0o755)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    command = str(root / "bin" / "python") if how == "absolute" else "bin/python"
    proc = subprocess.run([command, "-I", "-c", "import sys; print(sys.executable); print(sys.prefix)"],
                          cwd=root, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    executable, prefix = proc.stdout.split()
    # sys.executable is the launcher (child interpreters start the same way); the prefix is the runtime.
    assert Path(executable).resolve() == (root / "bin" / "python").resolve()
    assert Path(prefix).resolve() == root.resolve()
