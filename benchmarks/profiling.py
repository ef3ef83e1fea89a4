"""Where the time goes in a case that misses its target.

The case runs alone in a child process (``python -m benchmarks.profiling --case KEY``) sampled by py-spy
(1 kHz, idle time included, so a Redis round trip shows as the wait it is); py-spy does not slow the profiled
code down. Only samples inside the in-process request loop count. When py-spy cannot attach (no ptrace), the
case is profiled in process with pyinstrument instead, which does slow function calls down: its shares are
then shares of a slowed-down request.

The result: per function, its share of the samples taken inside the request loop and the µs per request they
stand for, for authmw's own functions (inclusive time) and for the hottest functions anywhere (self time).
Under asyncio, time spent awaiting I/O (a Redis reply) is not inside the loop's frames: it is the difference
between the measured µs/request and the loop's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP_FRAMES = ("run_asgi (", "run_wsgi (")


@dataclass
class Profile:
    key: str
    title: str
    tool: str
    requests: int
    #: wall time per request, as the loop measured it under the profiler
    us_per_request: float
    samples: int
    #: time per request seen inside the request loop's frames (an asyncio loop awaiting I/O is outside them)
    loop_us: float
    #: (function, where, share of the loop's samples, µs per request), inclusive time of authmw's functions
    authmw_inclusive: list[tuple[str, str, float, float]]
    #: the same for the hottest functions anywhere, by self time
    hottest_self: list[tuple[str, str, float, float]]


def _split(frame: str) -> tuple[str, str]:
    name, _, where = frame.rpartition(" (")
    return (name, where.rstrip(")")) if name else (frame, "")


def _is_authmw(where: str) -> bool:
    return where.startswith("authmw/") or "/authmw/" in where


def shares(stacks: Sequence[tuple[list[str], int]]) -> tuple[int, Counter[str], Counter[str]]:
    """(samples in the request loop, inclusive samples per frame, self samples per frame)."""
    total = 0
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for frames, count in stacks:
        start = next((i for i, f in enumerate(frames) if f.startswith(LOOP_FRAMES)), None)
        if start is None or start == len(frames) - 1:
            continue  # not in the loop, or in the loop's own bookkeeping
        inner = frames[start + 1 :]
        total += count
        for frame in set(inner):
            inclusive[frame] += count
        self_time[inner[-1]] += count
    return total, inclusive, self_time


def _rows(
    counter: Counter[str], total: int, us_per_sample: float, keep: bool, count: int
) -> list[tuple[str, str, float, float]]:
    rows = []
    for frame, samples in counter.most_common():
        name, where = _split(frame)
        if keep and not _is_authmw(where):
            continue
        rows.append((name, where, samples / total, samples * us_per_sample))
        if len(rows) == count:
            break
    return rows


def pyspy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else None


def profile_with_pyspy(key: str, title: str, seconds: float, tokens: int) -> Profile | None:
    """Profile case `key` in a child process under py-spy; None if py-spy is missing or cannot attach."""
    tool = pyspy()
    if tool is None:
        return None
    with tempfile.TemporaryDirectory(prefix="authmw-bench-") as tmp:
        raw = Path(tmp) / "stacks.txt"
        child = [sys.executable, "-m", "benchmarks.profiling", "--case", key, "--seconds", str(seconds)]
        child += ["--tokens", str(tokens)]
        argv = [tool, "record", "-r", "1000", "--idle", "--function", "-f", "raw", "-o", str(raw), "--", *child]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(  # noqa: S603
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines or not raw.exists():
            print(f"bench: py-spy could not profile {key} ({done.returncode}): {done.stderr[-500:]}", file=sys.stderr)
            return None
        measured = json.loads(lines[-1])
        stacks = []
        for line in raw.read_text(encoding="utf-8").splitlines():
            frames, _, count = line.rpartition(" ")
            if frames and count.isdigit():
                stacks.append((frames.split(";"), int(count)))
    total, inclusive, self_time = shares(stacks)
    if not total:
        return None
    per_sample = 1000.0 / measured["requests"]  # one sample = 1 ms, spread over the requests
    return Profile(
        key,
        title,
        "py-spy (1 kHz, idle included)",
        measured["requests"],
        measured["us_per_request"],
        total,
        total * per_sample,
        _rows(inclusive, total, per_sample, True, 14),
        _rows(self_time, total, per_sample, False, 12),
    )


async def profile_in_process(case: object, seconds: float, batch: int) -> Profile:
    """The pyinstrument fallback, on a case of this process (`benchmarks.inprocess.Case`)."""
    from pyinstrument import Profiler

    from benchmarks.inprocess import Case

    assert isinstance(case, Case)
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    requests = spent = 0
    profiler.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        elapsed, failures = await case.run(batch)
        if failures:
            profiler.stop()
            raise RuntimeError(f"{case.label}: {failures} requests failed under the profiler")
        requests += batch
        spent += elapsed
    profiler.stop()
    session = profiler.last_session
    root = session.root_frame() if session is not None else None
    stacks: list[tuple[list[str], int]] = []

    def walk(frame: object, path: list[str]) -> None:
        name = getattr(frame, "function", "?")
        owner = getattr(frame, "class_name", None)
        label = f"{owner}.{name}" if owner else name
        here = [*path, f"{label} ({getattr(frame, 'file_path_short', '')}:{getattr(frame, 'line_no', 0)})"]
        for child in getattr(frame, "children", []):
            if getattr(child, "is_synthetic", False):
                stacks.append((here, max(1, round(child.time * 1e5))))  # self time, in 10 µs units
            else:
                walk(child, here)

    if root is not None:
        walk(root, [])
    total, inclusive, self_time = shares(stacks)
    per_sample = 10.0 / max(requests, 1)  # one count = 10 µs
    return Profile(
        case.key,
        f"{case.framework}: {case.label}",
        "pyinstrument (0.1 ms; slows calls down)",
        requests,
        spent / max(requests, 1) / 1000,
        total,
        total * per_sample,
        _rows(inclusive, max(total, 1), per_sample, True, 14),
        _rows(self_time, max(total, 1), per_sample, False, 12),
    )


# ---- the child process: one case, alone ----


async def _run_alone(key: str, seconds: float, tokens: int) -> dict[str, float]:
    from benchmarks.common import redis_url, run_prefix
    from benchmarks.inprocess import build_cases, close_suite

    suite = await build_cases(tokens, redis_url(), run_prefix(), only={key})
    try:
        case = suite.cases[0]
        await case.check(min(200, tokens))
        batch = max(1, min(2000, tokens))
        requests = spent = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            elapsed, failures = await case.run(batch)
            if failures:
                raise SystemExit(f"{case.label}: {failures} requests failed")
            requests += batch
            spent += elapsed
        return {"requests": requests, "us_per_request": spent / requests / 1000}
    finally:
        await close_suite(suite)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one in-process case alone (the profiled child process).")
    parser.add_argument("--case", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run_alone(args.case, args.seconds, args.tokens))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
