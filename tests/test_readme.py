"""The README's commands work as written: its quickstart against the demo, and its two one-file apps saved as
`app.py`, started with its `export` lines and server commands, and driven with its `curl` lines, each line's
output checked against what its comment says. Only the port is changed (8000 may be taken).

(tests/test_docs.py runs every Python block of README.md and docs/ on its own; this file runs the commands.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_MARK = "@@readme-line@@"


def section(title: str) -> str:
    """The README's text under `## title`, up to the next `## `."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def blocks(text: str, language: str) -> list[str]:
    return [code for lang, code in _FENCE.findall(text) if lang == language]


@dataclass
class Line:
    command: str
    expected: list[str]  # what the comment says the output holds


def console_lines(block: str) -> list[Line]:
    """Each command line of a console block and what its comment promises (a status, a header, JSON members)."""
    lines = []
    for raw in block.splitlines():
        command, _, comment = raw.partition("  # ")
        lines.append(Line(command.strip(), [part.strip() for part in comment.split(", ") if part.strip()]))
    return [line for line in lines if line.command]


def check(line: Line, output: str) -> None:
    """A curl line's comment is what its output shows: a status, a header, or JSON (abridged with "...")."""
    if not line.command.startswith("curl"):
        return  # other comments explain, they promise no output
    assert line.expected, f"{line.command!r} says nothing of what it answers"
    for promise in line.expected:
        pairs = re.findall(r'"(\w+)":("[^"]*"|\d+)', promise)
        if pairs:  # each JSON member shown must be in the answer
            for name, value in pairs:
                assert f'"{name}":{value}' in output.replace(": ", ":"), (line.command, promise, output)
        else:
            assert promise.lower() in output.lower(), (line.command, promise, output)


def run_script(lines: list[Line], env: dict[str, str], cwd: Path, port: int) -> None:
    """Run the lines in one bash, as a person would type them; check each command's output against its comment."""
    script = ["set -u"]
    for index, line in enumerate(lines):
        command = line.command.replace("8000", str(port))
        script.append(f"echo '{_MARK}{index}'")
        script.append(command)
        if command.endswith("&"):  # a server started in the background: wait until it answers, as a person would
            script.append(f"for i in $(seq 100); do curl -s -o /dev/null 127.0.0.1:{port} && break; sleep 0.2; done")
    script.append("wait")  # the README's own `kill %1` stopped the server; nothing may be left running
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    outputs = done.stdout.split(_MARK)[1:]
    assert done.returncode == 0 and len(outputs) == len(lines), (done.stdout, done.stderr)
    for line, output in zip(lines, outputs, strict=True):
        try:
            check(line, output.split("\n", 1)[1])
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n-- the script's stderr:\n{done.stderr}") from None


def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell in `tmp_path`, with the project's virtualenv at `.venv` (as after `make demo` or `make test`)
    and none of our AUTHMW_* settings."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    path = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AUTHMW_")}, "PATH": path}


def test_readme_quickstart_commands_answer_as_it_says(tmp_path: Path) -> None:
    text = section("Quickstart")
    assert blocks(text, "console")[0].strip() == "make demo"
    port, env = free_port(), user_env(tmp_path)
    demo = subprocess.Popen(  # what `make demo` runs (tests/test_demo.py checks the target itself)
        [sys.executable, "-m", "examples", "starlette", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait = Line(f"for i in $(seq 100); do curl -s -o /dev/null 127.0.0.1:{port} && break; sleep 0.2; done", [])
        run_script([wait, *console_lines(blocks(text, "console")[1])], env, tmp_path, port)
    finally:
        demo.terminate()
        demo.wait(timeout=10)


@pytest.mark.parametrize("framework", ["Starlette", "Flask"])
def test_readme_one_file_app_works_as_written(framework: str, tmp_path: Path) -> None:
    (code,) = blocks(section(f"{framework} in one file"), "python")
    (tmp_path / "app.py").write_text(code)
    starlette = blocks(section("Starlette in one file"), "console")
    setup, commands = console_lines(starlette[0]), console_lines(starlette[1])
    if framework == "Flask":  # "the same export lines", then its own server command, then "the same curl lines"
        server = re.search(r"`(\.venv/bin/gunicorn [^`]*&)`", section("Flask in one file"))
        assert server is not None
        setup = [line for line in setup if "uvicorn" not in line.command] + [Line(server.group(1), [])]
    assert setup[-1].command.endswith("&") and commands[-1].command.startswith("kill %1")
    run_script([*setup, *commands], user_env(tmp_path), tmp_path, free_port())


def test_readme_json_promises_are_parsed() -> None:
    """The checker reads an abridged JSON comment as members the answer must hold (it cannot pass by accident)."""
    line = Line("curl", ['{"user":"alice","via":"bearer token",...}'])
    check(line, json.dumps({"items": ["tea"], "user": "alice", "via": "bearer token"}))
    with pytest.raises(AssertionError):
        check(line, json.dumps({"user": "bob", "via": "bearer token"}))
    with pytest.raises(AssertionError):
        check(Line("curl", ["401"]), "303")
