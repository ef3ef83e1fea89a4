"""Restartable steps (authmw.flows): the same step gives the same answer driven inline (WSGI), as a flow
(ASGI), and with I/O outcomes replayed; an I/O failure surfaces where the I/O was asked for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from authmw.flows import (
    INLINE,
    IO,
    Blocking,
    NeedsIO,
    StoreCall,
    io_blocking,
    io_store,
    restartable,
    run_async,
    run_sync,
)


class SlowStore:
    """A store whose calls would do I/O (no `nonblocking`): records which face was used."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def load(self, key: str) -> str:
        self.calls.append(f"load {key}")
        return f"value of {key}"

    async def aload(self, key: str) -> str:
        self.calls.append(f"aload {key}")
        return f"value of {key}"

    def broken(self) -> None:
        raise ConnectionError("down")

    async def abroken(self) -> None:
        raise ConnectionError("down")


class FastStore(SlowStore):
    nonblocking = True


class PeekingStore(SlowStore):
    def peek_load(self, key: str) -> str | None:
        return "peeked" if key == "hot" else None


def two_points(store: Any, runs: list[int]) -> Any:
    def step(io: IO) -> tuple[str, int]:
        runs.append(1)
        first = io_store(io, "first", store, "load", "a")
        second = io_blocking(io, "second", lambda: 40 + 2)
        return first, second

    return step


def test_inline_makes_each_call_there_and_then() -> None:
    store, runs = SlowStore(), []
    assert two_points(store, runs)(INLINE) == ("value of a", 42)
    assert store.calls == ["load a"] and len(runs) == 1


def test_without_outcomes_the_first_io_point_raises_needs_io_with_its_effect() -> None:
    store = SlowStore()
    with pytest.raises(NeedsIO) as raised:
        two_points(store, [])(None)
    assert raised.value.key == "first"
    assert isinstance(raised.value.effect, StoreCall) and raised.value.effect.name == "load"
    assert store.calls == []  # nothing was done: the caller performs the effect


def test_as_a_flow_each_effect_is_performed_once_and_the_step_rerun() -> None:
    store, runs = SlowStore(), []
    assert asyncio.run(run_async(restartable(two_points(store, runs)))) == ("value of a", 42)
    assert store.calls == ["aload a"]  # the async face, once
    assert len(runs) == 3  # ran, asked for "first"; ran, asked for "second"; ran to the end
    store2, runs2 = SlowStore(), []
    assert run_sync(restartable(two_points(store2, runs2))) == ("value of a", 42)
    assert store2.calls == ["load a"]


def test_in_process_stores_and_local_cache_hits_need_no_io_point() -> None:
    fast = FastStore()
    assert io_store(None, "k", fast, "load", "x") == "value of x"
    assert io_store(None, "k", PeekingStore(), "load", "hot") == "peeked"
    with pytest.raises(NeedsIO):
        io_store(None, "k", PeekingStore(), "load", "cold")


def test_an_io_failure_is_raised_at_the_io_point_that_asked_for_it() -> None:
    store = SlowStore()
    seen: list[str] = []

    def step(io: IO) -> str:
        try:
            io_store(io, "broken", store, "broken")
        except ConnectionError as exc:
            seen.append(str(exc))
            return "handled"
        return "not reached"

    assert asyncio.run(run_async(restartable(step))) == "handled"
    assert run_sync(restartable(step)) == "handled"
    assert step(INLINE) == "handled"
    assert seen == ["down", "down", "down"]


def test_a_step_that_asks_twice_for_one_point_is_a_bug_not_a_loop() -> None:
    def step(io: IO) -> None:
        io_blocking(io, "same", lambda: 1)
        raise NeedsIO("same", Blocking(lambda: 1))

    with pytest.raises(RuntimeError, match="asked again"):
        run_sync(restartable(step))
