"""Ctrl-C held back over bookkeeping that must not be torn in half.

A trial that has left the search's list of running trials but is not yet in the study and trials.jsonl
would be lost by a Ctrl-C landing in between. Inside `held_sigint()` a SIGINT is only noted; it is
delivered again, to whatever handler was there before, as the block ends.
"""

from __future__ import annotations

import signal
import threading
from types import TracebackType


class held_sigint:  # noqa: N801 - used as a statement-like context manager: `with held_sigint():`
    """Hold SIGINT for the duration of the block (main thread only; elsewhere Python cannot take signals)."""

    def __enter__(self) -> "held_sigint":
        self._caught = False
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            # None: the handler was not set from Python (an embedding host); the default is what we can restore.
            previous = signal.signal(signal.SIGINT, self._note)
            self._previous = signal.SIG_DFL if previous is None else previous
        return self

    def _note(self, signum, frame) -> None:
        self._caught = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGINT, self._previous)
        # An exception already leaving the block stops the search anyway; raising over it would hide it.
        if self._caught and exc_type is None:
            signal.raise_signal(signal.SIGINT)
