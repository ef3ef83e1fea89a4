"""The one way authmw does I/O (authmw.io): a flow gives the same answer driven by `run_sync` (WSGI) and by
`run_async` (ASGI), an effect's failure is thrown back in where it was yielded, an in-process operation is a flow
that never yields, and a Redis `Command` makes the same client calls through either client (EVALSHA, the script
loaded on NOSCRIPT, invalidations published with one retry, client errors answered as the link says)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterable
from typing import Any

import pytest
import redis.exceptions

from authmw.io import MISS, Blocking, Command, Flow, Pending, Script, inline, run_async, run_sync, settled
from authmw.stores import StoreUnavailable


def both(make: Any) -> list[Any]:
    """What a flow made by `make()` returns under each runner (or the exception it raises)."""
    answers = []
    for drive in (run_sync, lambda flow: asyncio.run(run_async(flow))):
        try:
            answers.append(drive(make()))
        except Exception as exc:
            answers.append(exc)
    return answers


def test_a_flow_is_driven_alike_by_both_runners() -> None:
    threads: list[str] = []

    def where() -> int:
        threads.append(threading.current_thread().name)
        return 40

    def flow() -> Flow[int]:
        first = yield Blocking(where)
        second = yield Blocking(lambda: 2)
        return first + second

    assert both(flow) == [42, 42]
    main = threading.main_thread().name
    assert threads[0] == main and threads[1] != main  # inline under run_sync, a worker thread under run_async


def test_a_failed_effect_is_thrown_back_in_at_its_yield() -> None:
    def down() -> None:
        raise ConnectionError("down")

    def flow() -> Flow[str]:
        try:
            yield Blocking(down)
        except ConnectionError as exc:
            return f"handled: {exc}"
        return "not reached"

    def unhandled() -> Flow[None]:
        yield Blocking(down)

    assert both(flow) == ["handled: down", "handled: down"]
    assert all(isinstance(answer, ConnectionError) for answer in both(unhandled))


def test_a_flow_that_yields_nothing_returns_its_value_from_either_runner() -> None:
    def flow() -> Flow[str]:
        return "at once"
        yield  # a generator all the same

    assert both(flow) == ["at once", "at once"]


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def peek_add(self, n: int, *, times: int = 1) -> int:
        """Adds."""
        self.calls += 1
        if n < 0:
            raise ValueError("negative")
        return n * times

    add = inline(peek_add)


def test_inline_makes_a_plain_method_a_flow_that_never_yields() -> None:
    counter = Counter()
    flow = counter.add(2, times=3)
    assert counter.calls == 0  # a flow does nothing until it is driven
    assert run_sync(flow) == 6 and counter.calls == 1
    assert asyncio.run(run_async(counter.add(1))) == 1
    with pytest.raises(ValueError, match="negative"):
        run_sync(counter.add(-1))  # raised where the flow is driven, as an effect's failure would be
    # The plain function stays the peek, and the flow keeps its signature (callers read it: `_takes_family`).
    assert counter.peek_add(4) == 4
    assert list(inspect.signature(counter.add).parameters) == ["n", "times"]
    assert Counter.add.__doc__ == "Adds."


def test_composed_flows_yield_from_one_another() -> None:
    counter = Counter()

    def total() -> Flow[int]:
        a = yield from counter.add(1)
        b = yield Blocking(lambda: 10)
        c = yield from counter.add(2, times=50)
        return a + b + c

    assert both(total) == [111, 111]


def test_pending_carries_a_flow_and_miss_is_not_none() -> None:
    def flow() -> Flow[str | None]:
        return None
        yield

    pending = Pending(flow())
    assert type(pending) is Pending and run_sync(pending.flow) is None
    # `settled`: an answer that may be pending, as a flow
    assert run_sync(settled("at once")) == "at once"
    assert run_sync(settled(Pending(Counter().add(21, times=2)))) == 42
    assert MISS is not None and not isinstance(MISS, type(None)) and repr(MISS) == "<Miss.MISS: 'MISS'>"


# ---- Command: one Redis round trip, through either client ----


class Cache:
    def __init__(self) -> None:
        self.dropped: list[str] = []

    def invalidate(self, messages: Iterable[str]) -> None:
        self.dropped.extend(messages)


class FakeClient:
    """Records `execute_command` calls; `failures` maps a command name to the errors its next calls raise."""

    def __init__(self, replies: dict[str, Any], failures: dict[str, list[Exception]] | None = None) -> None:
        self.replies = replies
        self.failures = failures or {}
        self.calls: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> Any:
        self.calls.append(args)
        pending = self.failures.get(args[0])
        if pending:
            raise pending.pop(0)
        return self.replies.get(args[0])


class AsyncFakeClient(FakeClient):
    async def execute_command(self, *args: Any) -> Any:  # type: ignore[override]
        return FakeClient.execute_command(self, *args)


class Link:
    channel = "test:invalidate"

    def __init__(self, client: Any, async_client: Any) -> None:
        self.client, self.async_client = client, async_client
        self.local_cache = Cache()
        self.failures: list[BaseException] = []

    def unavailable(self, error: BaseException) -> Exception:
        self.failures.append(error)
        return StoreUnavailable("the session store is unavailable", retry_after=7)


SCRIPT = Script("test", "return 1", "sha-of-test")


def run_both(make_command: Any, replies: dict[str, Any], failures: Any = None) -> list[tuple[Any, Any]]:
    """(answer or exception, the link) for the command made by `make_command(link)`, under each runner."""
    outcomes = []
    for asynchronous in (False, True):
        copy = {name: list(errors) for name, errors in (failures or {}).items()}
        client = (AsyncFakeClient if asynchronous else FakeClient)(replies, copy)
        link = Link(None if asynchronous else client, client if asynchronous else None)
        command = make_command(link)
        try:
            answer = asyncio.run(command.run_async()) if asynchronous else command.run_sync()
        except Exception as exc:
            answer = exc
        outcomes.append((answer, link))
    return outcomes


def calls(link: Link) -> list[tuple[Any, ...]]:
    client = link.client or link.async_client
    return list(client.calls)


def test_a_script_is_sent_by_its_sha_and_loaded_once_on_noscript() -> None:
    def make(link: Link) -> Command:
        return Command(link, lambda reply: reply * 2, SCRIPT, ["k1", "k2"], ["a", 1])

    evalsha = ("EVALSHA", "sha-of-test", 2, "k1", "k2", "a", 1)
    for answer, link in run_both(make, {"EVALSHA": 21}):
        assert answer == 42 and calls(link) == [evalsha]
    noscript = {"EVALSHA": [redis.exceptions.NoScriptError("NOSCRIPT")]}
    for answer, link in run_both(make, {"EVALSHA": 21}, noscript):
        assert answer == 42 and calls(link) == [evalsha, ("SCRIPT LOAD", "return 1"), evalsha]


def test_invalidations_reach_this_process_and_are_published_with_one_retry() -> None:
    def make(link: Link) -> Command:
        return Command(link, bool, command=("SET", "k", "v", "XX"), invalidates=("s:one", "u:alice"))

    publish = ("PUBLISH", "test:invalidate", "s:one\nu:alice")
    for answer, link in run_both(make, {"SET": 1}):
        assert answer is True and calls(link) == [("SET", "k", "v", "XX"), publish]
        assert link.local_cache.dropped == ["s:one", "u:alice"]
    once = {"PUBLISH": [redis.exceptions.ConnectionError("reset")]}
    for answer, link in run_both(make, {"SET": 1}, once):
        assert answer is True and calls(link)[1:] == [publish, publish] and link.failures == []
    twice = {"PUBLISH": [redis.exceptions.ConnectionError("reset"), TimeoutError("slow")]}
    for answer, link in run_both(make, {"SET": 1}, twice):
        assert isinstance(answer, StoreUnavailable) and answer.retry_after == 7
        assert [type(error) for error in link.failures] == [TimeoutError]


def test_an_announcement_publishes_without_a_command() -> None:
    for answer, link in run_both(lambda link: Command(link, invalidates=("t:bob",)), {}):
        assert answer is None and calls(link) == [("PUBLISH", "test:invalidate", "t:bob")]


def test_client_errors_are_answered_as_the_link_says_and_others_pass_through() -> None:
    def make(link: Link) -> Command:
        return Command(link, command=("MGET", "a"))

    for error in (
        redis.exceptions.ConnectionError("refused"),
        OSError("unreachable"),
        redis.exceptions.ResponseError(),
    ):
        for answer, link in run_both(make, {}, {"MGET": [error]}):
            assert isinstance(answer, StoreUnavailable) and link.failures == [error]
    for answer, _ in run_both(make, {}, {"MGET": [KeyError("a bug")]}):
        assert isinstance(answer, KeyError)


def test_a_link_without_the_client_a_runner_needs_says_so() -> None:
    link = Link(None, AsyncFakeClient({}))
    with pytest.raises(RuntimeError, match="no synchronous client"):
        Command(link, command=("GET", "k")).run_sync()
    link = Link(FakeClient({}), None)
    with pytest.raises(RuntimeError, match="no asyncio client"):
        asyncio.run(Command(link, command=("GET", "k")).run_async())
