"""SIGTERM and SIGINT as a clean stop that a re-run resumes from.

``cem`` installs one handler for both signals. Outside the two sections below it raises
``Interrupted`` at once; inside ``deferred()`` (an atomic write: a file, a model folder, a
checkpoint) the signal waits until the write is complete; inside ``graceful()`` (training)
it is only recorded, and the training callback stops at the end of the current batch after
saving a checkpoint. The CLI turns ``Interrupted`` into one line and exit status 128 + the
signal's number (143 for SIGTERM, 130 for SIGINT), as a shell reports a killed command.

A launcher that requeues jobs near their time limit (submitit, behind
``hydra/launcher=slurm``: SLURM sends SIGUSR2 ``signal_delay_s`` before the limit) has its
handler installed when the job starts. ``install`` then takes that signal too: it stops
the command at the same safe points, and ``requeue`` hands it on to the launcher's
handler, which requeues the job and exits; the requeued job resumes from its stage.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Where launchers put their time-limit signal (submitit: SIGUSR2 unless
# SUBMITIT_PREEMPT_SIGNAL says otherwise).
LAUNCHER_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


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
    installed = False
    pending: int | None = None
    deferred = 0
    graceful = 0
    launcher: dict[int, Callable] = {}  # noqa: RUF012 - the one instance's, set by install


_state = _State()


def install() -> None:
    """Handle SIGTERM and SIGINT in this process (main thread only; elsewhere a no-op), and
    a launcher's time-limit signal where a launcher has set a handler for it."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.pending, _state.deferred, _state.graceful, _state.installed = None, 0, 0, True
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    for signum in LAUNCHER_SIGNALS:
        previous = signal.getsignal(signum)
        if callable(previous) and previous is not _handler:
            _state.launcher[int(signum)] = previous
            signal.signal(signum, _handler)


def reclaim() -> None:
    """Put this handler back on SIGTERM and SIGINT where a library has replaced it, as
    Lightning's trainer does at the start of fit: its own stop skips the checkpoint, and
    under DDP its handler runs a collective that can meet another rank's training step. A
    no-op where ``install`` has not run, or off the main thread."""
    if not _state.installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        if signal.getsignal(signum) is not _handler:
            signal.signal(signum, _handler)


def requeue(e: Interrupted) -> bool:
    """Hand a launcher's time-limit signal back to the launcher's handler, which requeues
    the job and exits (submitit: ``scontrol requeue``, then ``sys.exit``; it raises when
    the job may not be requeued again). False when ``e`` is no launcher's signal."""
    handler = _state.launcher.get(e.signum)
    if handler is None:
        return False
    handler(e.signum, None)
    return True


def _handler(signum: int, frame: object) -> None:
    if _state.pending is None:
        _state.pending = signum
    check()


def pending() -> int | None:
    """The signal received and not yet acted on, if any."""
    return _state.pending


def stop(detail: str = "", signum: int | None = None) -> None:
    """Act on the pending signal, or on ``signum`` (another rank's: every rank stops at the
    same batch): raise ``Interrupted`` (and forget the signal)."""
    signum, _state.pending = signum or _state.pending, None
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
