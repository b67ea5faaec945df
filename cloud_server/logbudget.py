"""A bound on log volume: repeated records are rate-limited and summarized, never unbounded.

Any request may make the server log (a rejected call, an unexpected error); a client repeating
it must not be able to fill the disk. `RepeatLimiter` lets the first `burst` records of each
(logger, level, message template) through per `window_s`, with a traceback only on the first,
drops the rest, and says how many it dropped on the next record it lets through. A global cap
(`max_per_window`) bounds the sum over all templates, so varying the message does not help.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RepeatLimiter", "install_log_budget"]


class RepeatLimiter(logging.Filter):
    """Rate-limit repeated log records per message template and in total."""

    def __init__(
        self, burst: int = 5, window_s: float = 60.0, max_per_window: int = 600
    ) -> None:
        """burst: records per template per window; max_per_window: all templates together."""
        super().__init__()
        self.burst, self.window_s, self.max_per_window = burst, window_s, max_per_window
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._counts: dict[tuple[str, int, str], int] = {}
        self._suppressed: dict[tuple[str, int, str], int] = {}
        self._total = 0
        self._total_suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """True to emit the record (possibly with its traceback dropped and a summary added)."""
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self.window_s:
                self._window_start, self._counts, self._total = now, {}, 0
            seen = self._counts.get(key, 0)
            if seen >= self.burst or self._total >= self.max_per_window:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                self._total_suppressed += 1
                return False
            self._counts[key] = seen + 1
            self._total += 1
            dropped = self._suppressed.pop(key, 0)
        if seen > 0 and record.exc_info:
            record.exc_info, record.exc_text = None, None  # one traceback per template a window
            record.msg = f"{record.msg} (traceback as above)"
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar messages suppressed]"
        return True

    @property
    def suppressed(self) -> int:
        """Records dropped since start."""
        return self._total_suppressed


def install_log_budget(limiter: RepeatLimiter | None = None) -> RepeatLimiter:
    """Attach one RepeatLimiter to every handler of the root logger; returns it."""
    limiter = limiter or RepeatLimiter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(limiter)
    return limiter
