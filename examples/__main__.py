"""Run an example app with demo settings: ``python -m examples starlette|flask [--redis] [--port 8000]``.

`make demo`, `make demo-flask` and `make demo-redis` call this. It fills in what a demo needs (plain-http cookies,
an HS256 key, a cookie-signing key) unless the environment already sets it, starts the server, and once the server
answers prints where to go, who to log in as and how to get a token.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request

# Demo-only secrets, public by design: never use them for anything real.
DEMO_JWT_KEY = "demo-only-jwt-secret-change-me-0123456789abcdef"
DEMO_SECRET_KEY = "demo-only-cookie-key-change-me-0123456789abcdef"
DEMO_REDIS_URL = "redis://127.0.0.1:6379/0"

DEMO_ENV = {
    "AUTHMW_COOKIE_SECURE": "0",  # the demo is plain http on loopback
    "AUTHMW_JWT_ALGORITHMS": "HS256",
    "AUTHMW_JWT_KEY": DEMO_JWT_KEY,
    "AUTHMW_SECRET_KEYS": DEMO_SECRET_KEY,  # fixed, so a restart keeps Redis sessions valid
}
REDIS_ENV = {"AUTHMW_REDIS_URL": DEMO_REDIS_URL, "AUTHMW_REDIS_PREFIX": "authmw-demo:"}


def server_command(framework: str, port: int) -> list[str]:
    if framework == "starlette":
        app = "examples.starlette_app.app:app"
        return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    # One worker: the in-memory store is per process (with --redis any number would share the sessions).
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "examples.flask_app.app:app",
    ]


def demo_environment(redis: bool, environ: dict[str, str]) -> dict[str, str]:
    """The demo's settings under what the caller already set (theirs win)."""
    return {**DEMO_ENV, **(REDIS_ENV if redis else {}), **environ}


def wait_until_up(url: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def banner(framework: str, url: str, env: dict[str, str]) -> str:
    store = f"Redis at {env['AUTHMW_REDIS_URL']}" if env.get("AUTHMW_REDIS_URL") else "memory (ends with the process)"
    key = env["AUTHMW_JWT_KEY"] if env.get("AUTHMW_JWT_KEY") == DEMO_JWT_KEY else "$AUTHMW_JWT_KEY"
    return f"""
authmw demo ({framework}) is up: {url}
  log in as   alice / wonderland   (scopes items:read items:write)
           or bob / builder        (scope items:read)
  sessions:   {store}
  a token:    export AUTHMW_JWT_ALGORITHMS=HS256 AUTHMW_JWT_KEY={key}
              TOKEN=$(.venv/bin/authmw token mint --sub alice --scope items:read)
              curl -s {url}/api/items -H "Authorization: Bearer $TOKEN"
Press Ctrl-C to stop.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples", description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=["starlette", "flask"])
    parser.add_argument(
        "--redis", action="store_true", help=f"sessions in Redis (AUTHMW_REDIS_URL, else {DEMO_REDIS_URL})"
    )
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    env = demo_environment(args.redis, dict(os.environ))
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(server_command(args.framework, args.port), env=env)
    try:
        if not wait_until_up(url, server):
            print(f"the {args.framework} demo did not answer on {url}; see the server's output above", file=sys.stderr)
            return 1
        print(banner(args.framework, url, env), flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
