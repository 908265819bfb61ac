"""The locks agree with pyproject.toml, and the virtualenv holds exactly them.

`make lock` writes requirements/*.txt from pyproject.toml (and
requirements/build.in); a dependency changed in one and not regenerated in the
other fails here, naming the package. Package metadata comes from the
virtualenv, which `make venv` installs from the dev lock.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

REQUIREMENTS = REPO / "requirements"
RUNTIME_LOCK = REQUIREMENTS / "lock.txt"
DEV_LOCK = REQUIREMENTS / "dev-lock.txt"
BUILD_LOCK = REQUIREMENTS / "build-lock.txt"
LOCKS = (RUNTIME_LOCK, DEV_LOCK, BUILD_LOCK)

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass
class Pin:
    version: Version
    hashes: int = 0
    via: set[str] = field(default_factory=set)


def _read_lock(path: Path) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if match := PIN.match(line):
            current = Pin(Version(match.group(2)))
            pins[canonicalize_name(match.group(1))] = current
            in_via = False
        elif current is not None and stripped.startswith("--hash="):
            assert HASH.fullmatch(stripped.rstrip(" \\")), f"{path.name}: odd hash line {line!r}"
            current.hashes += 1
        elif current is not None and stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.add(rest)
        elif current is not None and in_via and stripped.startswith("#   "):
            current.via.add(stripped.removeprefix("#").strip())
        elif stripped and not stripped.startswith("#"):
            raise AssertionError(f"{path.name}: not a pinned requirement: {line!r}")
    return pins


def _pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def _requirements(*, dev: bool) -> list[Requirement]:
    project = _pyproject()["project"]
    specs = list(project["dependencies"])
    if dev:
        specs += project["optional-dependencies"]["dev"]
    return [Requirement(s) for s in specs]


def _target_environment() -> dict[str, str]:
    """The environment the locks are made for: CPython 3.11 on Linux x86_64."""
    env = dict(default_environment())
    full = sys.version.split()[0]
    env.update(
        python_version="3.11",
        python_full_version=full if full.startswith("3.11.") else "3.11.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
    )
    return env


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = _target_environment()
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


def _installed(name: str, pin: Pin) -> importlib.metadata.Distribution:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name} is locked but not installed: run `make venv`")
    assert Version(dist.version) == pin.version, (
        f"{name} {dist.version} is installed but {pin.version} is locked:"
        " rebuild the virtualenv: rm -rf .venv && make venv"
    )
    return dist


def _closure(lock: Path, roots: list[Requirement]) -> set[str]:
    """Walk the requirements from pyproject.toml through the packages' metadata.

    Every requirement met on the way must be pinned in the lock, at a version
    it allows; the names reached are returned.
    """
    pins = _read_lock(lock)
    queue = deque((req, "pyproject.toml") for req in roots)
    seen: set[tuple[str, frozenset[str]]] = set()
    reached: set[str] = set()
    while queue:
        req, parent = queue.popleft()
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (required by {parent}) is not in {lock.name}: run `make lock`"
        pin = pins[name]
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"{lock.name} pins {name}=={pin.version}, but {parent} requires {req}: run `make lock`"
        )
        reached.add(name)
        key = (name, frozenset(canonicalize_name(e) for e in req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = _installed(name, pin)
        extras = set(key[1])
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if _applies(sub, extras):
                queue.append((sub, f"{name} {pin.version}"))
    return reached


@pytest.mark.parametrize(
    ("lock", "dev"), [(RUNTIME_LOCK, False), (DEV_LOCK, True)], ids=["runtime", "dev"]
)
def test_the_lock_holds_what_pyproject_requires_and_nothing_else(lock: Path, dev: bool) -> None:
    roots = [r for r in _requirements(dev=dev) if _applies(r, set())]
    reached = _closure(lock, roots)
    stale = set(_read_lock(lock)) - reached
    assert not stale, f"{lock.name} pins {sorted(stale)}, which nothing requires: run `make lock`"


def test_top_level_pins_are_the_pyproject_requirements() -> None:
    """uv marks what pyproject.toml asked for: a dependency dropped from it shows."""
    for lock, dev in ((RUNTIME_LOCK, False), (DEV_LOCK, True)):
        wanted = {canonicalize_name(r.name) for r in _requirements(dev=dev)}
        direct = {n for n, p in _read_lock(lock).items() if "fullpass (pyproject.toml)" in p.via}
        assert direct == wanted, f"{lock.name} is out of date: run `make lock`"


def test_runtime_and_dev_locks_pin_the_same_versions() -> None:
    runtime, dev = _read_lock(RUNTIME_LOCK), _read_lock(DEV_LOCK)
    assert set(runtime) <= set(dev)
    differ = {n: (runtime[n].version, dev[n].version) for n in runtime}
    differ = {n: v for n, v in differ.items() if v[0] != v[1]}
    assert not differ, f"the runtime and dev locks disagree: {differ}"


def test_the_build_lock_satisfies_the_build_system() -> None:
    pins = _read_lock(BUILD_LOCK)
    assert "pip" in pins
    for spec in _pyproject()["build-system"]["requires"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name].version), (
            f"{BUILD_LOCK.name} does not satisfy the build requirement {req}: run `make lock`"
        )


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_locks_are_pinned_hashed_sorted_and_name_their_target(lock: Path) -> None:
    text = lock.read_text()
    header = "\n".join(text.splitlines()[:2])
    for flag in (
        "--python-version 3.11",
        "--python-platform x86_64-unknown-linux-gnu",
        "--generate-hashes",
        f"-o requirements/{lock.name}",
    ):
        assert flag in header, f"{lock.name} was not made by `make lock` ({flag} missing)"
    pins = _read_lock(lock)
    assert pins
    unhashed = [n for n, p in pins.items() if not p.hashes]
    assert not unhashed, f"{lock.name}: no hash for {unhashed}"
    assert list(pins) == sorted(pins), f"{lock.name} is not sorted"


def test_no_gpu_stack_in_the_locks() -> None:
    """Nothing the project uses needs torch; it would multiply the image's size."""
    for lock in LOCKS:
        heavy = [
            n
            for n in _read_lock(lock)
            if n in {"torch", "triton", "transformers"} or n.startswith("nvidia-")
        ]
        assert not heavy, f"{lock.name} pulls {heavy}"


def test_the_virtualenv_holds_exactly_the_dev_lock() -> None:
    pins = _read_lock(DEV_LOCK)
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version)
        for d in importlib.metadata.distributions()
    }
    tools = {"pip", "setuptools", "fullpass"}
    extra = set(installed) - set(pins) - tools
    rebuild = "rebuild it: rm -rf .venv && make venv"
    assert not extra, f"installed but not locked: {sorted(extra)}: {rebuild}"
    wrong = {n: (installed.get(n), p.version) for n, p in pins.items()}
    wrong = {n: v for n, v in wrong.items() if v[0] != v[1]}
    assert not wrong, f"installed vs locked: {wrong}: {rebuild}"


def test_make_venv_installs_the_locks() -> None:
    makefile = (REPO / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.M)
    assert stamp and "pyproject.toml" in stamp.group(1) and "$(LOCKS)" in stamp.group(1)
    for lock in LOCKS:
        assert f"requirements/{lock.name}" in makefile
    assert "--require-hashes -r requirements/dev-lock.txt" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile
    assert re.search(r"^lock:", makefile, re.M)
