"""Over HTTP: each app in its own uvicorn (one worker, loopback), loaded in turn by `wrk` or, when wrk is
missing, by the in-repo bounded `benchmarks.loadgen`. Rounds are interleaved like the in-process cases: each
round loads every server for the same duration, in a shuffled order, so a ratio compares one time window.
Before each load the case proves it authenticates (200 and the principal id); any non-2xx answer during the
load fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from authmw.testing import mint_token, session_cookie
from benchmarks.common import FLOOR_LABEL, USER, authmw_config

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 16


class HTTPCaseFailed(RuntimeError):
    pass


@dataclass
class HTTPCase:
    key: str
    label: str
    factory: str
    headers: list[str] = field(default_factory=list)
    group: str = "authmw"
    #: the uvicorn protocol/loop pair: "h11" (what `pip install uvicorn` gives) or "httptools" (uvicorn[standard])
    server: str = "h11"
    #: environment variables of its own, for its factory
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/p"


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(case: HTTPCase, env: dict[str, str]) -> None:
    case.port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        case.factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(case.port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
        # Named, never left to what happens to be installed: the two setups cost differently per request.
        *(
            ("--http", "httptools", "--loop", "uvloop")
            if case.server == "httptools"
            else ("--http", "h11", "--loop", "asyncio")
        ),
    ]
    env = {**env, **case.env}
    case.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: S603


def _wait_ready(case: HTTPCase, timeout: float = 30.0) -> None:
    assert case.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if case.process.poll() is not None:
            output = case.process.stdout.read().decode(errors="replace") if case.process.stdout else ""
            raise HTTPCaseFailed(f"{case.label}: uvicorn exited with {case.process.returncode}:\n{output}")
        try:
            if httpx.get(f"http://127.0.0.1:{case.port}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise HTTPCaseFailed(f"{case.label}: not ready after {timeout} s")


def _stop(case: HTTPCase) -> None:
    process = case.process
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if process.stdout:
        process.stdout.close()
    case.process = None


def _prove(case: HTTPCase) -> None:
    headers = dict(h.split(": ", 1) for h in case.headers)
    response = httpx.get(case.url, headers=headers, timeout=5.0)
    if response.status_code != 200 or response.text != USER:
        raise HTTPCaseFailed(f"{case.label}: {response.status_code} {response.text[:200]!r} instead of 200 {USER!r}")


def loadgen_choice(wanted: str) -> str:
    """``wrk`` if wanted (or auto) and installed, else ``python`` (benchmarks.loadgen)."""
    if wanted in ("auto", "wrk") and shutil.which("wrk"):
        return "wrk"
    if wanted == "wrk":
        raise SystemExit("--loadgen wrk: wrk is not installed (`make bench` installs Debian's wrk when root)")
    return "python"


def _wrk(case: HTTPCase, duration: float) -> dict[str, float]:
    wrk = shutil.which("wrk")
    assert wrk is not None
    seconds = max(1, round(duration))
    argv = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "2s"]
    for header in case.headers:
        argv += ["-H", header]
    argv.append(case.url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)  # noqa: S603
    out = done.stdout
    if done.returncode != 0:
        raise HTTPCaseFailed(f"{case.label}: wrk failed ({done.returncode}): {done.stderr or out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise HTTPCaseFailed(f"{case.label}: cannot read wrk's output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "requests": float(total.group(1)),
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


def _python_loadgen(case: HTTPCase, duration: float) -> dict[str, float]:
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--url", case.url]
    argv += ["--connections", str(CONNECTIONS), "--duration", str(duration)]
    for header in case.headers:
        argv += ["-H", header]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=duration + 30, check=False)  # noqa: S603
    if done.returncode != 0:
        raise HTTPCaseFailed(f"{case.label}: loadgen failed ({done.returncode}): {done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["non_2xx"] or result["errors"]:
        print(f"warning: {case.label}: first bad answer: {result['first_bad']!r}", file=sys.stderr)
    return {k: float(result[k]) for k in ("rps", "requests", "non_2xx", "errors")}


@dataclass
class HTTPResults:
    cases: list[HTTPCase]
    rps: dict[str, list[float]]
    rounds: int
    duration: float
    loadgen: str


def build_cases(url: str, prefix: str) -> list[HTTPCase]:
    token = mint_token(authmw_config(algorithm="HS256"), USER, ("items:read",), ttl=3600)
    config = authmw_config(store="redis", url=url, prefix=prefix)
    name, value = session_cookie(config, USER, ("items:read",))
    assert config.sessions is not None
    config.sessions.store.client.close()
    bearer = f"Authorization: Bearer {token}"
    cookie = f"Cookie: {name}={value}"
    fast = "uvicorn[standard]: httptools + uvloop"
    return [
        HTTPCase("h-bare", "bare Starlette", "benchmarks.asgi_apps:http_bare", group="bare"),
        HTTPCase(
            "h-floor",
            FLOOR_LABEL,
            "benchmarks.asgi_apps:http_floor",
            [bearer],
            "floor",
            env={"AUTHMW_BENCH_FLOOR_AUTHORIZATION": f"Bearer {token}"},
        ),
        HTTPCase(
            "h-peer-pyjwt",
            "AuthenticationMiddleware + PyJWT HS256",
            "benchmarks.asgi_apps:http_peer_pyjwt",
            [bearer],
            "peer",
        ),
        HTTPCase("h-authmw-jwt", "authmw JWT repeated token (cache)", "benchmarks.asgi_apps:http_authmw_jwt", [bearer]),
        HTTPCase(
            "h-authmw-session-local",
            "authmw session, Redis + local cache",
            "benchmarks.asgi_apps:http_authmw_session_local",
            [cookie],
        ),
        # The same three with uvicorn's fast protocol and loop: a cheaper server leaves authmw a larger share.
        HTTPCase(
            "hs-bare", f"bare Starlette ({fast})", "benchmarks.asgi_apps:http_bare", group="bare", server="httptools"
        ),
        HTTPCase(
            "hs-authmw-jwt",
            f"authmw JWT repeated token (cache) ({fast})",
            "benchmarks.asgi_apps:http_authmw_jwt",
            [bearer],
            server="httptools",
        ),
        HTTPCase(
            "hs-authmw-session-local",
            f"authmw session, Redis + local cache ({fast})",
            "benchmarks.asgi_apps:http_authmw_session_local",
            [cookie],
            server="httptools",
        ),
    ]


def bare_key(case: HTTPCase) -> str:
    """The bare app measured on the same server setup as `case`."""
    return "hs-bare" if case.server == "httptools" else "h-bare"


@contextlib.contextmanager
def servers(cases: list[HTTPCase], url: str, prefix: str) -> Iterator[list[HTTPCase]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AUTHMW_BENCH_REDIS_URL": url,
        "AUTHMW_BENCH_PREFIX": prefix,
    }
    try:
        for case in cases:
            _start(case, env)
        for case in cases:
            _wait_ready(case)
        yield cases
    finally:
        for case in cases:
            _stop(case)


def run_rounds(
    cases: list[HTTPCase],
    rounds: int,
    duration: float,
    loadgen: str,
    seed: int = 11,
    progress: Callable[[str], None] | None = None,
) -> HTTPResults:
    measure = _wrk if loadgen == "wrk" else _python_loadgen
    for case in cases:  # warm-up (and the local cache's first load)
        _prove(case)
        measure(case, min(duration, 1.0))
    rps: dict[str, list[float]] = {case.key: [] for case in cases}
    rng = random.Random(seed)  # noqa: S311  (the order of cases, not a secret)
    for number in range(rounds):
        order = list(cases)
        rng.shuffle(order)
        for case in order:
            _prove(case)
            result = measure(case, duration)
            if result["non_2xx"] or result["errors"]:
                raise HTTPCaseFailed(
                    f"{case.label}: {result['non_2xx']:.0f} non-2xx answers and {result['errors']:.0f} socket errors "
                    f"in {result['requests']:.0f} requests"
                )
            rps[case.key].append(result["rps"])
        if progress:
            progress(f"over HTTP ({loadgen}): round {number + 1}/{rounds} done")
    return HTTPResults(cases, rps, rounds, duration, loadgen)
