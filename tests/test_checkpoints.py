"""Tests for trionet._checkpoints: the cheaper schedule point and its fallback."""

from __future__ import annotations

import types
from collections.abc import Generator
from typing import Any

import trio
import trio.lowlevel

from trionet._stream import _checkpoints
from trionet._stream._checkpoints import schedule_point, select


def test_the_fast_trap_is_chosen_on_this_trio() -> None:
    # The probe found Trio's own message: the fast trap is in use.  (If a
    # Trio release changes the protocol this fails, and trionet has fallen
    # back to the public function -- correct, only slower.)
    assert _checkpoints.FAST
    assert schedule_point is not trio.lowlevel.cancel_shielded_checkpoint


async def test_it_is_a_schedule_point() -> None:
    # Two tasks each recording ten steps with a schedule point between steps
    # interleave; without one, the first would finish all ten first.
    seq: list[str] = []

    async def steps(tag: str) -> None:
        for _ in range(10):
            seq.append(tag)
            await schedule_point()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(steps, "a")
        nursery.start_soon(steps, "b")
    assert len(seq) == 20
    first = seq[0]
    assert seq[:10] != [first] * 10


async def test_it_is_not_a_cancel_point() -> None:
    reached = False
    with trio.CancelScope() as scope:
        scope.cancel()
        await schedule_point()  # shielded, like cancel_shielded_checkpoint
        reached = True
        await trio.lowlevel.checkpoint()
    assert reached
    assert scope.cancelled_caught


async def test_it_counts_as_a_schedule_point_for_trio_testing() -> None:
    # assert_checkpoints wants a cancel point *and* a schedule point.
    with trio.testing.assert_checkpoints():
        await trio.lowlevel.checkpoint_if_cancelled()
        await schedule_point()


def test_fallback_when_the_message_is_unknown() -> None:
    async def public() -> None:
        await trio.lowlevel.cancel_shielded_checkpoint()

    # No message to compare with, or one the public function does not yield:
    # the public function is used as is.
    assert select(None, public) is public
    assert select(object(), public) is public


def test_fallback_when_the_public_function_yields_something_else() -> None:
    @types.coroutine
    def other_protocol() -> Generator[Any, Any, None]:
        yield "something else"

    message = object()
    assert select(message, other_protocol) is other_protocol

    @types.coroutine
    def same_protocol() -> Generator[Any, Any, None]:
        yield message

    chosen = select(message, same_protocol)
    assert chosen is not same_protocol
    coro = chosen()
    assert coro.send(None) is message  # type: ignore[attr-defined]
    coro.close()  # type: ignore[attr-defined]


async def test_the_run_loop_sends_back_a_plain_value_for_the_message() -> None:
    # The fast trap does not unwrap what comes back; that is only sound
    # while Trio answers this message with Value(None) -- even in a
    # cancelled scope.  If a Trio release changes that, this fails.
    import outcome
    from trio._core import _traps

    @types.coroutine
    def raw_trap() -> Generator[Any, Any, Any]:
        return (yield _traps.CancelShieldedCheckpoint)

    assert await raw_trap() == outcome.Value(None)  # type: ignore[func-returns-value]
    with trio.CancelScope() as scope:
        scope.cancel()
        assert await raw_trap() == outcome.Value(None)  # type: ignore[func-returns-value]
