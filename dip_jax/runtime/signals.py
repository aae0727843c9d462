"""SIGINT/SIGTERM during a long run: finish the current chunk, then stop cleanly.

Contract: inside `with SignalGuard(enabled) as guard:` the first SIGINT or
SIGTERM only sets `guard.signum` (the loop checks it between chunks, writes a
checkpoint and raises); a second one restores the previous handlers and
raises KeyboardInterrupt at once. Handlers are installed only in the main
thread and only for the duration of the block.
"""

from __future__ import annotations

import signal
import threading


class SignalGuard:
    """Turns the first SIGINT/SIGTERM into a flag checked between chunks; a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum

    def __enter__(self):
        if self.enabled:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self.restore()
        return False


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else str(signum)
