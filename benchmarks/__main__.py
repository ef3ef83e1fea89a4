"""``python -m benchmarks``: the full suite (`make bench`), or ``--smoke`` (`make bench-smoke`, `make test`).

Exit status: 0 when every case authenticated on every request (targets met or not: they are reported),
1 when a case failed to authenticate or a part could not run, 2 when Redis is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import inprocess, overhttp, report, revocation
from benchmarks.common import redis_check, redis_cleanup, redis_url, run_prefix
from benchmarks.profiling import Profile, profile_in_process, profile_with_pyspy

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("inprocess", "http", "revocation")


@dataclass
class Settings:
    rounds: int
    requests: int
    http_rounds: int
    http_seconds: float
    workers: int
    trials: int
    profile_seconds: float
    max_profiles: int


FULL = Settings(
    rounds=7,
    requests=3000,
    http_rounds=7,
    http_seconds=4,
    workers=3,
    trials=50,
    profile_seconds=3.0,
    max_profiles=8,
)
SMOKE = Settings(
    rounds=1,
    requests=40,
    http_rounds=1,
    http_seconds=1,
    workers=2,
    trials=2,
    profile_seconds=0.2,
    max_profiles=1,
)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _inprocess(
    settings: Settings, url: str, prefix: str, profile: bool
) -> tuple[inprocess.InProcessResults, list[Profile]]:
    _log(f"in-process: building the cases (minting {settings.requests} tokens per algorithm)")
    suite = await inprocess.build_cases(settings.requests, url, prefix)
    try:
        results = await inprocess.run_rounds(suite, settings.rounds, settings.requests, progress=_log)
        profiles: list[Profile] = []
        if profile:
            missed = [t.case_key for t in report.targets(results, None, None) if t.verdict == "missed" and t.case_key]
            keys = list(dict.fromkeys(missed))[: settings.max_profiles] or ["s-authmw-jwt-repeated"]
            for key in keys[: settings.max_profiles]:
                case = next(c for c in results.cases if c.key == key)
                title = f"{case.framework}: {case.label}"
                _log(f"profiling {title} for {settings.profile_seconds:g} s")
                found = profile_with_pyspy(key, title, settings.profile_seconds, settings.requests)
                if found is None:
                    _log("py-spy unavailable: profiling with pyinstrument instead")
                    found = await profile_in_process(case, settings.profile_seconds, min(2000, settings.requests))
                profiles.append(found)
        return results, profiles
    finally:
        await inprocess.close_suite(suite)


def render(
    settings: Settings,
    smoke: bool,
    machine: list[tuple[str, str]],
    loadgen: str,
    inproc: inprocess.InProcessResults | None,
    http: overhttp.HTTPResults | None,
    revoked: list[revocation.Propagation] | None,
    profiles: list[Profile],
    elapsed: float,
) -> str:
    out = ["# authmw benchmarks", ""]
    if smoke:
        out += ["**Smoke run** (tiny counts: checks that every case works; the numbers mean nothing).", ""]
    out += [
        "Produced by `make bench` (`python -m benchmarks --write benchmarks/RESULTS.md`); "
        f"this run took {elapsed / 60:.1f} min. Every number below comes from this one run.",
        "",
        "## Machine and versions",
        "",
        report.table(["", ""], [[k, f"`{v}`" if k == "uname -a" else v] for k, v in machine], "ll"),
        "",
        report.table(["package", "version"], [[k, v] for k, v in report.versions()], "ll"),
        "",
        "## Method",
        "",
        f"- **In process**: each app is called directly by a minimal ASGI (Starlette) or WSGI (Flask) caller: no "
        f"server, no sockets. {settings.rounds} rounds; in each round every case answers {settings.requests} "
        "requests, the cases in a shuffled order, so every overhead (case minus the bare app of the same framework, "
        "*same round*) and every ratio (overhead ÷ the peer's overhead, same round) compares one time window. Shown: "
        "median [min \u2013 max] over the rounds.",
        "- **Every request proves it authenticated**: it must answer 200 with the principal's id as its body, or "
        "the run fails. First-sight JWT cases send a different token on every request and authmw's verified-token "
        "cache is emptied before every batch, so each token is verified in full; the repeated-token case sends one "
        "token (a cache hit after the first request).",
        "- **Configurations**: authmw as the example apps run it (sessions always on, JWT revocation checked in "
        "the session store; issuer and audience checked), through its Starlette adapter and Flask extension with "
        "endpoint decorators. Peers as their docs set them up: Starlette `AuthenticationMiddleware` with a PyJWT "
        "backend (`jwt.decode` with the key prepared once, issuer and audience checked), starsessions "
        "(`SessionMiddleware` + `SessionAutoloadMiddleware`, Redis store, rolling 30 min lifetime), Starlette's "
        "`SessionMiddleware` (signed cookie), Flask-JWT-Extended `@jwt_required()` (HS256, issuer and audience "
        "checked), Flask-Login on Flask's signed-cookie session, and Flask-Login + Flask-Session on Redis.",
        "- **Floor** (in process and over HTTP): not an authenticator, but the least any identity middleware of "
        "authmw's shape costs on this machine: it looks the raw Authorization value up in a dict, attaches what it "
        'finds (`scope["user"]`; on Flask a `before_request` hook keeping it on `g`, read through a `LocalProxy` '
        "as `current_user` is), and adds the two identity headers (`Vary`, `Cache-Control: no-store`) as the "
        "response starts. The µs targets are shown beside it, and beside how fast this machine runs the bare app "
        "against the one the targets (docs/PERFORMANCE.md) were set on (bare Starlette ≈ 9 µs, bare Flask ≈ 46 µs).",
        "- **Redis** on loopback (127.0.0.1:6379, db 9, unless `--redis-url`), under a key prefix of the run's own: "
        "exactly those keys are deleted afterwards. Redis commands per request "
        "are counted on the clients, outside the timed rounds.",
        "- **Over HTTP**: each app in its own uvicorn (1 worker, `--no-access-log`, loopback), on the setup "
        "`pip install uvicorn` gives (`--http h11 --loop asyncio`: the targets) and, for the bare app and authmw's "
        "two cases, also on uvicorn[standard]'s (`--http httptools --loop uvloop`), each compared with the bare app "
        "on the same setup; loaded by "
        f"**{loadgen}** with {overhttp.CONNECTIONS} keep-alive connections for {settings.http_seconds:g} s per case "
        f"per round, {settings.http_rounds} rounds, interleaved and shuffled like the in-process cases. Before "
        "every load the case proves it authenticates; any non-2xx answer fails the run.",
        f"- **Revocation**: {settings.workers} worker processes (spawned) each run an authmw app on "
        "`RedisStore.from_url(url, local_cache=True)` and serve a fresh session (or token) of a fresh user from their "
        "local cache (checked: no Redis command while serving it), polling every 0.5 ms; the main process logs the "
        "user out (`/logout` for the session, `/logout-everywhere` for the token); the delay is from just before "
        "the logout until the last worker refuses.",
        "",
        "## Targets",
        "",
        report.targets_table(report.targets(inproc, http, revoked)),
        "",
    ]
    if inproc is not None:
        for framework in (inprocess.STARLETTE, inprocess.FLASK):
            out += [
                f"## In process: {framework}",
                "",
                report.inprocess_table(inproc, framework),
                "",
            ]
    if http is not None:
        out += ["## Over HTTP", "", report.http_table(http), ""]
    if revoked is not None:
        out += ["## Revocation propagation", "", report.revocation_table(revoked), ""]
    if profiles:
        out += [
            "## Profiles of the missed targets",
            "",
            "Taken by the suite right after the rounds: each case that missed a target runs alone (same in-process "
            "caller, same app) under the profiler. Before any fix.",
            "",
            report.profiles_section(profiles),
        ]
    return "\n".join(out).rstrip() + "\n"


NOTES_MARKER = "<!-- Everything below this line is kept by `make bench` when it rewrites this file. -->"


def kept_notes(path: Path) -> str:
    """The hand-written part of an existing report (profiles, fixes, before/after), carried into the new one."""
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    if NOTES_MARKER in previous:
        return "\n" + previous[previous.index(NOTES_MARKER) :]
    return f"\n{NOTES_MARKER}\n\n## Notes, fixes and before/after\n\n(none yet)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts; never writes a file")
    parser.add_argument("--write", metavar="PATH", help="write the report (Markdown) here, e.g. benchmarks/RESULTS.md")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--http-seconds", type=float)
    parser.add_argument("--no-profile", action="store_true", help="do not profile the missed targets")
    parser.add_argument(
        "--redis-url",
        help="the Redis to use, on loopback (default: $AUTHMW_BENCH_REDIS_URL, else redis://127.0.0.1:6379/9); "
        "the run writes under its own key prefix ($AUTHMW_BENCH_PREFIX, else a fresh one) and deletes only those keys",
    )
    args = parser.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    settings = Settings(**vars(base))
    if args.rounds:
        settings.rounds = settings.http_rounds = args.rounds
    if args.requests:
        settings.requests = args.requests
    if args.http_seconds:
        settings.http_seconds = args.http_seconds
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {sorted(unknown)}")
    if args.smoke and args.write:
        parser.error("--smoke never writes a file")

    if args.redis_url:
        os.environ["AUTHMW_BENCH_REDIS_URL"] = args.redis_url  # the servers and profiler processes read it too
    url, prefix = redis_url(), run_prefix()
    problem = redis_check(url)
    if problem is not None:
        print(f"bench: {problem}; start redis-server there, or pass --redis-url", file=sys.stderr)
        return 2
    loadgen = overhttp.loadgen_choice(args.loadgen) if "http" in parts else "none"
    if loadgen == "wrk":
        _log("load generator: wrk")
    elif loadgen == "python":
        why = "as asked (--loadgen python)" if args.loadgen == "python" else "wrk is not installed"
        _log(f"load generator: the in-repo Python one (benchmarks/loadgen.py): {why}")
    _log(f"{'smoke' if args.smoke else 'full'} run of {', '.join(parts)}; Redis {url}, key prefix {prefix}")
    machine = report.machine(url)
    started = time.monotonic()
    inproc: inprocess.InProcessResults | None = None
    http: overhttp.HTTPResults | None = None
    revoked: list[revocation.Propagation] | None = None
    profiles: list[Profile] = []
    try:
        if "inprocess" in parts:
            inproc, profiles = asyncio.run(_inprocess(settings, url, prefix, profile=not args.no_profile))
        if "http" in parts:
            cases = overhttp.build_cases(url, prefix)
            _log(f"over HTTP: starting {len(cases)} uvicorn servers")
            with overhttp.servers(cases, url, prefix):
                http = overhttp.run_rounds(cases, settings.http_rounds, settings.http_seconds, loadgen, progress=_log)
        if "revocation" in parts:
            _log(f"revocation: {settings.workers} worker processes, {settings.trials} trials per credential")
            revoked = revocation.measure(url, prefix, settings.workers, settings.trials, progress=_log)
    except (inprocess.CaseFailed, overhttp.HTTPCaseFailed, RuntimeError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        removed = redis_cleanup(url, prefix)
        _log(f"removed {removed} Redis keys of this run")
    elapsed = time.monotonic() - started
    text = render(settings, args.smoke, machine, loadgen, inproc, http, revoked, profiles, elapsed)
    print()
    print(text)
    if args.write:
        path = Path(args.write)
        path.write_text(text + kept_notes(path), encoding="utf-8")
        _log(f"wrote {path}")
    _log(f"done in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
