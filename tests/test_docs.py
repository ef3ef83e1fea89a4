"""The documentation works: the MkDocs site builds with --strict (a broken link or anchor fails it), every
```python block of README.md and docs/*.md runs as a script of its own, README.md's relative links point to
files that exist, and no page cites what a reader cannot see.

A block that cannot run by nature is marked, with a reason, by a ``<!-- no-run: reason -->`` line right above its
fence (or ``{.no-run}`` in the fence's info string): it is reported as skipped, with that reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
#: how long one block may run
BLOCK_TIMEOUT = 60.0

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*?)[ \t]*$")
_NO_RUN_COMMENT = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>.*?)\s*-->\s*$")
_PYTHON = {"python", "py", "python3"}


def markdown_files() -> list[Path]:
    """README.md and every page of the site."""
    return [README, *sorted(DOCS.glob("*.md"))]


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@dataclass(frozen=True)
class Block:
    """One fenced ```python block: where it is, its code (dedented to its fence), and why it must not run."""

    file: str
    line: int
    code: str
    no_run: str | None = None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def fenced_blocks(path: Path) -> Iterator[tuple[int, str, str, str | None]]:
    """Every fenced block of a Markdown file: (line of its opening fence, its language, its code, the reason of a
    no-run marker or None). Fences of any language are tracked, so that a fence inside another block is text."""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE_OPEN.match(lines[index])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        indent, fence, info = len(opening["indent"]), opening["fence"], opening["info"]
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines):
            line = lines[index]
            stripped = line.lstrip(" \t")
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]).strip():
                break
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            index += 1
        index += 1  # past the closing fence (or the end of the file: an unclosed block runs to the end)
        words = info.replace("{", " ").replace("}", " ").split()
        language = words[0].lstrip(".").lower() if words else ""
        reason = None
        if ".no-run" in words:
            reason = "marked {.no-run} in the fence"
        else:
            previous = start - 1
            while previous >= 0 and not lines[previous].strip():
                previous -= 1
            marker = _NO_RUN_COMMENT.match(lines[previous]) if previous >= 0 else None
            if marker is not None:
                reason = marker["reason"] or "(no reason given)"
        yield start + 1, language, "\n".join(body) + "\n", reason


def python_blocks() -> list[Block]:
    return [
        Block(relative(path), line, code, reason)
        for path in markdown_files()
        for line, language, code, reason in fenced_blocks(path)
        if language in _PYTHON
    ]


BLOCKS = python_blocks()


def _params() -> list[Any]:
    params = []
    for block in BLOCKS:
        marks = [pytest.mark.skip(reason=f"no-run: {block.no_run}")] if block.no_run is not None else []
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


def _environment() -> dict[str, str]:
    """The environment a block runs in: the repository importable (`examples`), and no AUTHMW_* setting of the
    shell that runs the tests (a block sets what it needs itself)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AUTHMW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(block: Block) -> subprocess.CompletedProcess[str] | subprocess.TimeoutExpired:
    with tempfile.TemporaryDirectory(prefix="authmw-doc-block-") as directory:
        script = Path(directory) / "block.py"
        script.write_text(block.code, encoding="utf-8")
        try:
            return subprocess.run(
                [sys.executable, str(script)],
                cwd=directory,
                env=_environment(),
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            return expired


@pytest.fixture(scope="session")
def block_runs(request: pytest.FixtureRequest) -> Iterator[dict[str, Future[Any]]]:
    """Every selected block, started at once on a thread pool (each in its own interpreter): the whole file takes
    about as long as its slowest few blocks, not the sum of them all."""
    selected: list[Block] = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        block = callspec.params.get("block") if callspec is not None else None
        if isinstance(block, Block) and block.no_run is None:
            selected.append(block)
    workers = min(8, (os.cpu_count() or 2) + 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="doc-block") as pool:
        yield {block.id: pool.submit(_run, block) for block in selected}


def _numbered(code: str) -> str:
    return "\n".join(f"{number:4} | {line}" for number, line in enumerate(code.splitlines(), 1))


@pytest.mark.parametrize("block", _params())
def test_python_block_runs(block: Block, block_runs: dict[str, Future[Any]]) -> None:
    result = block_runs[block.id].result()
    where = f"the ```python block at {block.id}"
    if isinstance(result, subprocess.TimeoutExpired):
        pytest.fail(f"{where} did not finish in {BLOCK_TIMEOUT:g} s\n{_numbered(block.code)}", pytrace=False)
    if result.returncode != 0:
        pytest.fail(
            f"{where} failed (exit {result.returncode})\n{_numbered(block.code)}\n"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-6000:]}",
            pytrace=False,
        )


def test_docs_have_python_blocks() -> None:
    """The extraction finds the pages' examples (a fence syntax it missed would silently test nothing)."""
    in_docs = [block for block in BLOCKS if block.file.startswith("docs/")]
    assert len(in_docs) >= 10, [block.id for block in in_docs]


def test_no_run_markers_say_why() -> None:
    skipped = [block for block in BLOCKS if block.no_run is not None]
    print(f"{len(skipped)} of {len(BLOCKS)} python blocks are marked no-run: {[b.id for b in skipped]}")
    assert all(block.no_run != "(no reason given)" for block in skipped), [b.id for b in skipped]


# ---- the site ----


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml")]
    command += ["--site-dir", str(tmp_path / "site")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner: not about these pages
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert (tmp_path / "site" / "index.html").is_file(), output


# ---- README.md's links ----

_INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _prose(path: Path) -> str:
    """The Markdown of `path` without its fenced blocks and inline code spans (links there are text)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fenced: set[int] = set()
    for opening, _language, code, _reason in fenced_blocks(path):
        # 0-based: the opening fence, the code's lines and the closing fence
        fenced.update(range(opening - 1, opening + code.count("\n") + 1))
    kept = "\n".join(line for number, line in enumerate(lines) if number not in fenced)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", kept, flags=re.DOTALL)


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped, spaces to
    hyphens, -1, -2… on repeats)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(path).splitlines():
        heading = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading[1])
        slug = re.sub(r"[^\w\- ]", "", text.lower().replace("`", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def readme_links() -> list[str]:
    prose = _prose(README)
    matches = [*_INLINE_LINK.finditer(prose), *_REFERENCE_LINK.finditer(prose)]
    targets = [match["target"] for match in matches]
    return [target for target in targets if not _SCHEME.match(target) and not target.startswith("//")]


def test_readme_relative_links_exist() -> None:
    broken = []
    for target in readme_links():
        path_part, _, anchor = target.partition("#")
        destination = (README.parent / path_part).resolve() if path_part else README
        if REPO not in destination.parents and destination != REPO:
            broken.append(f"{target}: outside the repository")
        elif not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in github_anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {relative(destination)}")
    assert not broken, "README.md has broken relative links:\n" + "\n".join(broken)


# ---- what a reader cannot see ----

#: names of files outside what is published, and a promise code ("P26") cited bare: only docs/SECURITY.md, whose
#: table defines the codes, may use them
_UNSEEN = [
    (re.compile(r"DESIGN\.md", re.IGNORECASE), "DESIGN.md"),
    (re.compile(r"SECURITY-BAR", re.IGNORECASE), "SECURITY-BAR"),
    (re.compile(r"\bP\d{1,3}\b"), "a bare promise code"),
]


@pytest.mark.parametrize(
    "path", [p for p in markdown_files() if p != DOCS / "SECURITY.md"], ids=lambda p: relative(p) if p else ""
)
def test_no_references_a_reader_cannot_follow(path: Path) -> None:
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for pattern, what in _UNSEEN:
            for match in pattern.finditer(line):
                found.append(f"{relative(path)}:{number}: {what} {match.group()!r}: {line.strip()[:120]}")
    assert not found, "\n".join(found)
