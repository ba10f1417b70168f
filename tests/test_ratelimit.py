"""The log-line limiter: ``RateLimiter.allow`` and the ``RateLimiter.log`` helper.

Time is a fake ``time.monotonic`` (the limiter reads no other limiter_clock), moved
by hand: no sleeps, nothing depends on how fast the test runs.
"""

from __future__ import annotations

import logging

import pytest
from conftest import FakeTime

from trionet._ratelimit import RateLimiter

LOGGER = "trionet.test.ratelimit"


@pytest.fixture
def logger(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return logging.getLogger(LOGGER)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_allow_refills_at_burst_per_period(limiter_clock: FakeTime) -> None:
    limiter = RateLimiter(burst=2, period=10.0)
    assert [limiter.allow() for _ in range(4)] == [True, True, False, False]
    limiter_clock.now += 5.0  # half a period: one token back
    assert [limiter.allow() for _ in range(2)] == [True, False]
    assert limiter.take_suppressed() == 3
    assert limiter.take_suppressed() == 0
    limiter_clock.now += 3600.0  # refills to the burst, never beyond it
    assert [limiter.allow() for _ in range(3)] == [True, True, False]


def test_log_writes_a_burst_then_counts_and_reports_the_dropped(
    limiter_clock: FakeTime, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RateLimiter(burst=3, period=60.0)
    results = [limiter.log(logger, logging.WARNING, "line %d", i) for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert messages(caplog) == ["line 0", "line 1", "line 2"]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}

    limiter_clock.now += 20.0  # one token back: the next line says what was dropped
    assert limiter.log(logger, logging.ERROR, "line %d", 10)
    assert not limiter.log(logger, logging.ERROR, "line %d", 11)
    limiter_clock.now += 20.0
    assert limiter.log(logger, logging.ERROR, "line %d", 12)
    assert messages(caplog)[3:] == [
        "line 10 (7 similar errors not logged)",  # the default note, appended
        "line 12 (1 similar errors not logged)",
    ]
    assert caplog.records[-1].levelno == logging.ERROR


def test_log_note_wording_and_placement(
    limiter_clock: FakeTime, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    appended = RateLimiter(burst=1, period=10.0)
    inside = RateLimiter(burst=1, period=10.0)
    for _ in range(3):
        appended.log(logger, logging.INFO, "sweep of %s stopped", "x", note=" ({} line(s) dropped)")
        inside.log(
            logger, logging.INFO, "backing off (%s{note})", "y", note="; {} burst(s) dropped"
        )
    limiter_clock.now += 10.0
    appended.log(logger, logging.INFO, "sweep of %s stopped", "x", note=" ({} line(s) dropped)")
    inside.log(logger, logging.INFO, "backing off (%s{note})", "y", note="; {} burst(s) dropped")
    limiter_clock.now += 10.0  # nothing dropped since: no note, and no placeholder left behind
    inside.log(logger, logging.INFO, "backing off (%s{note})", "y", note="; {} burst(s) dropped")
    assert messages(caplog) == [
        "sweep of x stopped",
        "backing off (y)",
        "sweep of x stopped (2 line(s) dropped)",
        "backing off (y; 2 burst(s) dropped)",
        "backing off (y)",
    ]


def test_log_attaches_the_exception_and_names_the_caller(
    limiter_clock: FakeTime, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RateLimiter()
    exc = RuntimeError("policy database unavailable")
    assert limiter.log(logger, logging.ERROR, "check raised for %s", "peer", exc_info=exc)
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[1] is exc
    assert "policy database unavailable" in caplog.text  # the traceback is formatted
    # The record's origin is this test, not the helper.
    assert record.funcName == "test_log_attaches_the_exception_and_names_the_caller"
    assert record.pathname == __file__


def test_log_does_not_format_refused_lines(limiter_clock: FakeTime, logger: logging.Logger) -> None:
    class Explosive:
        def __str__(self) -> str:  # pragma: no cover - must never run
            raise AssertionError("a dropped line was formatted")

    limiter = RateLimiter(burst=1, period=10.0)
    assert limiter.log(logger, logging.DEBUG, "first")
    assert not limiter.log(logger, logging.DEBUG, "dropped %s", Explosive())
