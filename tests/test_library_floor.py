"""P14: the library floor. authmw requires the PyJWT and itsdangerous releases that fixed the advisories the
security bar names, and never python-jose (its algorithm confusion through DER keys is unfixed)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _floor(requirement: str, name: str) -> tuple[int, ...]:
    match = re.match(rf"{name}(?:\[[^\]]*\])?>=([\d.]+)", requirement.replace(" ", ""), re.IGNORECASE)
    assert match, f"{requirement!r} does not set a >= floor"
    return _version(match.group(1))


def test_p14_declared_floors() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower(): r for r in project["dependencies"]}
    assert _floor(requirements["pyjwt"], "pyjwt") >= (2, 15, 1)
    assert _floor(requirements["itsdangerous"], "itsdangerous") >= (2, 1, 2)
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    everything = " ".join(project["dependencies"] + extras)
    assert "jose" not in everything.lower()


def test_p14_installed_versions_meet_the_floor() -> None:
    assert _version(importlib.metadata.version("pyjwt")) >= (2, 15, 1)
    assert _version(importlib.metadata.version("itsdangerous")) >= (2, 1, 2)
    assert importlib.util.find_spec("jose") is None, "python-jose must not be installed beside authmw"
