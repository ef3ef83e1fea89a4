"""The benchmark suite cannot rot: `make test` runs its smoke (`python -m benchmarks --smoke`), which drives every
case (in process, over HTTP and the revocation measurement) with tiny counts and fails if any case does not
authenticate. It needs the `bench` extra: without it the test skips locally, and fails in CI (CI=true). It runs on
the test session's Redis (`--redis-url`) under the test's own key prefix, never on the benchmarks' default one.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import RedisSpace

ROOT = Path(__file__).resolve().parent.parent
BENCH_MODULES = ("starsessions", "flask_jwt_extended", "flask_login", "flask_session", "pyinstrument")

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def _require_bench_extra() -> None:
    missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        message = (
            f"the bench extra is not installed ({', '.join(missing)} missing): "
            "run `.venv/bin/pip install -e '.[dev,bench]'` (the Makefile's install step does)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_bench_smoke_every_case_authenticates(redis_space: RedisSpace) -> None:
    _require_bench_extra()
    from benchmarks.common import is_loopback

    if not is_loopback(redis_space.url):
        pytest.skip("the benchmarks run only on a loopback Redis, and AUTHMW_TEST_REDIS_URL names another host")
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--redis-url", redis_space.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "AUTHMW_BENCH_PREFIX": redis_space.prefix},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout[-6000:] + "\n--- stderr ---\n" + done.stderr[-6000:]
    assert done.returncode == 0, output
    # Every part ran and reported, and the smoke wrote nothing.
    for heading in ("## In process: Starlette", "## In process: Flask", "## Over HTTP", "## Revocation propagation"):
        assert heading in done.stdout, output
    assert "load generator:" in done.stdout, output
    assert f"Redis {redis_space.url}, key prefix {redis_space.prefix}" in done.stdout, output
    assert (results.read_bytes() if results.exists() else None) == before
