"""A shared Redis (AUTHMW_TEST_REDIS_URL) keeps everything the test run did not write.

A private redis-server stands in for a developer's own Redis, with keys planted in db 0 and in the databases the
e2e tests used to flush (7, 8, 10, 11, 14), one of them named like authmw's default prefix and one like another
test run's. A real subset of the Redis tests runs against it in a subprocess; afterwards every planted key is
intact, no other key is left, and the server was never sent FLUSHDB, FLUSHALL or KEYS.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import ROOT, RedisProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PLANTED_DBS = (0, 7, 8, 10, 11, 14)
# Apps on both frameworks writing sessions, refresh families and revocations, and three gunicorn workers
# sharing sessions through the local cache's pub/sub: each under the run's prefix.
SELECTION = " or ".join(
    (
        "(login_sets_cookie and redis)",
        "(logout_everywhere and redis)",
        "(token_lifecycle and redis)",
        "(workers_share and 1)",
    )
)
SELECTED = 7
TIMEOUT = 90.0  # it takes ~15 s; a hung server must not hang the suite


def _plant(developer: RedisProcess) -> dict[int, dict[bytes, bytes]]:
    """Keys of the developer's own in every database at risk; per db, each key's DUMP (its value, type included)."""
    planted: dict[int, dict[bytes, bytes]] = {}
    for db in PLANTED_DBS:
        with developer.client(db) as client:
            client.set("developer:note", f"kept in db {db}")
            client.hset("developer:profile", mapping={"name": "dev", "db": str(db)})
            client.set("developer:expiring", "x", ex=3600)
            if db == 0:
                client.set("authmw:{abcd}:s:x", "a session of the developer's own app (authmw's default prefix)")
                client.sadd("authmw:{abcd}:u:0123", "abcd.x")
                client.set("authmw-test-0badcafe:someone:k", "a key of another test run")
            planted[db] = {key: client.dump(key) for key in list(client.scan_iter(count=1000))}
    return planted


def _run_tests(url: str) -> tuple[int, str]:
    """The selected tests in a pytest subprocess on `url`; (exit status, output). Killed, servers and all, on
    timeout (its own process group)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_e2e_sessions.py"]
    argv += ["tests/test_e2e_tokens.py", "-k", SELECTION]
    env = {**os.environ, "AUTHMW_TEST_REDIS_URL": url, "AUTHMW_REQUIRE_REDIS": "1"}  # a skip would prove nothing
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the tests did not finish within {TIMEOUT} s:\n{output.decode(errors='replace')[-4000:]}")
    return process.returncode, output.decode(errors="replace")


def test_a_shared_redis_keeps_what_the_run_did_not_write(tmp_path: Path) -> None:
    developer = RedisProcess(tmp_path)  # the developer's Redis, as far as the run can tell
    developer.start()
    try:
        planted = _plant(developer)
        started = time.monotonic()
        status, output = _run_tests(developer.url)
        elapsed = time.monotonic() - started
        summary = output.strip().splitlines()[-1] if output.strip() else ""
        assert status == 0, output[-4000:]
        assert f"{SELECTED} passed" in summary and not re.search(r"failed|error|skipped", summary), output[-4000:]

        for db in PLANTED_DBS:
            with developer.client(db) as client:
                for key, dump in planted[db].items():
                    assert client.dump(key) == dump, f"db {db}: {key!r} changed or vanished"
                assert 3000 < client.ttl("developer:expiring") <= 3600
        with developer.client() as admin:
            left = {name: counts["keys"] for name, counts in admin.info("keyspace").items()}
            commands = admin.info("commandstats")
        assert left == {f"db{db}": len(planted[db]) for db in PLANTED_DBS}  # the run left none of its keys
        for command in ("flushdb", "flushall", "keys"):
            assert f"cmdstat_{command}" not in commands, f"the run sent {command.upper()}"
        assert commands["cmdstat_unlink"]["calls"] > 0  # it wrote keys, and deleted them by their prefix
        print(f"\n[isolation] {SELECTED} tests on the stand-in Redis in {elapsed:.1f} s")
    finally:
        developer.kill()
