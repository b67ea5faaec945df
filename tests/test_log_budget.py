"""The server's log budget: repeated records are rate-limited and summarized, not unbounded."""

from __future__ import annotations

import io
import logging

from cloud_server.logbudget import RepeatLimiter


def _logger(limiter: RepeatLimiter) -> tuple[logging.Logger, io.StringIO]:
    """A private logger writing through the limiter into a string."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(limiter)
    logger = logging.getLogger(f"test-log-budget-{id(limiter)}")
    logger.propagate = False
    logger.addHandler(handler)
    return logger, out


def test_repeats_are_capped_and_one_traceback_kept() -> None:
    limiter = RepeatLimiter(burst=3, window_s=3600)
    logger, out = _logger(limiter)
    for i in range(1000):
        try:
            raise ValueError(f"bad {i}")
        except ValueError:
            logger.exception("unexpected error in %s", "GetStrategy")
    text = out.getvalue()
    assert text.count("unexpected error in GetStrategy") == 3
    assert text.count("Traceback") == 1
    assert limiter.suppressed == 997


def test_varying_messages_hit_the_global_cap() -> None:
    limiter = RepeatLimiter(burst=5, window_s=3600, max_per_window=50)
    logger, out = _logger(limiter)
    for i in range(1000):
        logger.warning(f"client sent thing {i}")
    assert len(out.getvalue().splitlines()) == 50


def test_a_new_window_reports_what_was_dropped() -> None:
    limiter = RepeatLimiter(burst=1, window_s=0.0)  # every record starts a new window
    logger, out = _logger(limiter)
    logger.warning("same")
    logger.warning("same")
    assert out.getvalue().splitlines() == ["same", "same"]
    limiter.window_s = 3600
    for _ in range(4):
        logger.warning("again")
    limiter.window_s = 0.0
    logger.warning("again")
    assert out.getvalue().splitlines()[-1] == "again [3 similar messages suppressed]"
