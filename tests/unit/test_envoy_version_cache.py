"""agent/envoy/version_cache.py: a binary's version is remembered for that very file (path and identity), in a
cache this user alone may write; anything unusable about the cache is ignored, never an error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.envoy import version_cache


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "envoy"
    path.parent.mkdir()
    path.write_bytes(b"#!/bin/sh\necho 'envoy  version: abc/1.40.0/Clean/RELEASE/BoringSSL'\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"CACHE_DIRECTORY": str(tmp_path / "cache")}


def test_remembered_for_the_same_file_only(binary: Path, env: dict[str, str], tmp_path: Path) -> None:
    assert version_cache.lookup(str(binary), env) is None
    version_cache.remember(str(binary), "1.40.0", env)
    assert version_cache.lookup(str(binary), env) == "1.40.0"
    link = tmp_path / "envoy-link"
    link.symlink_to(binary)
    assert version_cache.lookup(str(link), env) == "1.40.0"  # the real path is the key
    # Rebuilt in place (size and modification time change): asked again.
    binary.write_bytes(binary.read_bytes() + b"# 1.41\n")
    assert version_cache.lookup(str(binary), env) is None
    version_cache.remember(str(binary), "1.41.0", env)
    # Replaced by another file (an upgrade: a new inode), even with the same size and times: asked again.
    st = binary.stat()
    replacement = tmp_path / "new-envoy"
    shutil.copy2(binary, replacement)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, binary)
    assert version_cache.lookup(str(binary), env) is None


def test_where_the_cache_lives() -> None:
    assert version_cache.cache_file({"CACHE_DIRECTORY": "/var/cache/kuma-dp:/other"}) == Path(
        "/var/cache/kuma-dp/envoy-versions.json")
    assert version_cache.cache_file({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/kuma-dp/envoy-versions.json")
    assert version_cache.cache_file({"HOME": "/h"}) == Path("/h/.cache/kuma-dp/envoy-versions.json")
    assert version_cache.cache_file({}) is None


def test_a_corrupt_cache_is_ignored_and_rewritten(binary: Path, env: dict[str, str]) -> None:
    path = version_cache.cache_file(env)
    assert path is not None
    path.parent.mkdir(mode=0o700)
    for garbage in (b"{not json", b"[1, 2]", b'{"%s": {"identity": "x", "version": 7}}' % str(binary).encode()):
        path.write_bytes(garbage)
        assert version_cache.lookup(str(binary), env) is None
    version_cache.remember(str(binary), "1.40.0", env)
    assert version_cache.lookup(str(binary), env) == "1.40.0"
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary file left


def test_a_cache_others_may_write_is_not_trusted(binary: Path, env: dict[str, str]) -> None:
    version_cache.remember(str(binary), "1.40.0", env)
    path = version_cache.cache_file(env)
    assert path is not None
    path.chmod(0o666)  # a version planted by someone else would reach the control plane
    assert version_cache.lookup(str(binary), env) is None
    path.chmod(0o600)
    assert version_cache.lookup(str(binary), env) == "1.40.0"
    path.parent.chmod(0o777)
    try:
        version_cache.remember(str(binary), "9.9.9", env)  # not written into a directory others may write
        path.parent.chmod(0o700)
        assert version_cache.lookup(str(binary), env) == "1.40.0"
    finally:
        path.parent.chmod(0o700)


def test_nothing_usable_is_not_an_error(binary: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    env = {"CACHE_DIRECTORY": str(blocked / "cache")}  # cannot be created
    version_cache.remember(str(binary), "1.40.0", env)
    assert version_cache.lookup(str(binary), env) is None
    assert version_cache.lookup(str(tmp_path / "missing"), {"CACHE_DIRECTORY": str(tmp_path)}) is None
    version_cache.remember(str(binary), "1.40.0", {})  # no place at all
