"""SIGTERM and SIGINT as a clean stop that a re-run resumes from.

``cem`` installs one handler for both signals. Outside the two sections below it raises
``Interrupted`` at once; inside ``deferred()`` (an atomic write: a file, a model folder, a
checkpoint) the signal waits until the write is complete; inside ``graceful()`` (training)
it is only recorded, and the training callback stops at the end of the current batch after
saving a checkpoint. The CLI turns ``Interrupted`` into one line and exit status 128 + the
signal's number (143 for SIGTERM, 130 for SIGINT), as a shell reports a killed command.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):  # noqa: N818 - a stop, not an error
    """A SIGTERM or SIGINT stopped the command; ``detail`` says what was saved.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in a stage
    takes it for a failure of its own.
    """

    def __init__(self, signum: int, detail: str = ""):
        self.signum, self.detail = int(signum), detail
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    pending: int | None = None
    deferred = 0
    graceful = 0


_state = _State()


def install() -> None:
    """Handle SIGTERM and SIGINT in this process (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.pending, _state.deferred, _state.graceful = None, 0, 0
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def _handler(signum: int, frame: object) -> None:
    if _state.pending is None:
        _state.pending = signum
    check()


def pending() -> int | None:
    """The signal received and not yet acted on, if any."""
    return _state.pending


def stop(detail: str = "") -> None:
    """Act on the pending signal: raise ``Interrupted`` (and forget the signal)."""
    signum, _state.pending = _state.pending, None
    if signum is not None:
        raise Interrupted(signum, detail)


def check() -> None:
    """Raise ``Interrupted`` for a pending signal, unless a write or training holds it."""
    if _state.deferred == 0 and _state.graceful == 0:
        stop()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section that a signal must not cut short (an atomic write); it acts on exit."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1
    check()


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Training: a signal is recorded for the training callback to act on at a batch end."""
    _state.graceful += 1
    try:
        yield
    finally:
        _state.graceful -= 1
