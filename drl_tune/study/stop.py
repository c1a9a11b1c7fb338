"""Stopping a study by a signal — Ctrl-C (SIGINT) or SIGTERM (Slurm's ``scancel``, ``kill``, a closed tmux pane) —
by one graceful path: what has finished is saved, one line says how to go on, the exit status says which signal.

Why this module: the signals reach the driver in three different states. Inside ``Tuner.fit()`` Tune must stop
itself (its trials' checkpoints and experiment state are then consistent), and Tune's own SIGINT handler tells its
caller nothing, so the handler records the signal and hands it to Tune as SIGUSR1, which Tune always takes as the
same graceful stop (``TUNE_DISABLE_SIGINT_HANDLER`` keeps Tune's own off while ours is on). Outside ``fit()`` (the
MLflow writes, the answer, the report) the handler raises :class:`~drl_tune.ground.guard.Stopped` where the driver
is; every file written there is written atomically, so the folder is resumable from any point. And ``ray.init``
installs Ray's own SIGTERM handler in the driver, which prints a native stack dump and aborts — so the handler is
installed (again) after Ray has started, for the whole study.

A ``Tuner.fit()`` running in another thread (a confirmation started while the search's last trials run,
``study.confirmation.EarlyConfirmation``) cannot take Tune's signal: Tune catches signals only in the main thread.
Such a fit runs inside :func:`fit_in_thread`, whose event Tune polls as it would its own, and the study's handler
sets that event too (:meth:`StopSignals.link`): both runs stop at their next step, with the same consistent state.

A second signal stops at once (``KeyboardInterrupt``), as a second Ctrl-C does everywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from drl_tune.ground import environ
from drl_tune.ground.guard import Stopped, exit_code_of

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class StopSignals:
    """Which stop signal arrived (``signum``; None: none), and whether a ``Tuner.fit()`` is running to take it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_fit = False
        self.linked: list[threading.Event] = []  # the stop events of fits running in other threads

    def is_set(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM (128 + the signal, the shells' convention)."""
        return exit_code_of(self.signum)

    @property
    def name(self) -> str:
        return NAMES.get(signal.Signals(self.signum), signal.Signals(self.signum).name) if self.signum else ""

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signum = signum
        for event in self.linked:
            event.set()  # a fit in another thread stops at its next step
        if self.in_fit:
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop
        elif not self.linked:
            raise Stopped(signum)
        # else: a fit in another thread is stopping; the driver waits for it and then reports the stop

    def link(self, event: threading.Event) -> None:
        """From now on a stop signal also sets ``event`` (at once, if one already came), until :meth:`unlink`."""
        if self.signum is not None:
            event.set()
        self.linked.append(event)

    def unlink(self, event: threading.Event) -> None:
        if event in self.linked:
            self.linked.remove(event)


_active: list[StopSignals] = []


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Take SIGINT and SIGTERM for the block (install it after Ray has started); restores the previous handlers.
    Off the main thread (signals reach only the main thread) it installs nothing and Tune keeps its own handling."""
    watch = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield watch
        return
    previous = {s: signal.signal(s, watch.handle) for s in SIGNALS}
    _active.append(watch)
    try:
        yield watch
    finally:
        _active.remove(watch)
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def fit_watch() -> Iterator[StopSignals]:
    """Run ``Tuner.fit()`` inside this: a signal then stops Tune gracefully and is recorded in the watch returned
    (the study's, when :func:`stop_signals` is active; else one installed for the block)."""
    with contextlib.ExitStack() as stack:
        watch = _active[-1] if _active else stack.enter_context(stop_signals())
        if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
            yield watch
            return
        stack.enter_context(environ.scoped({"TUNE_DISABLE_SIGINT_HANDLER": "1"}))
        watch.in_fit = True
        try:
            yield watch
        finally:
            watch.in_fit = False


_thread_events: dict[int, threading.Event] = {}


@contextlib.contextmanager
def fit_in_thread(event: threading.Event) -> Iterator[None]:
    """Run a ``Tuner.fit()`` off the main thread inside this: setting ``event`` stops it as a signal stops a fit in the
    main thread (trials saved, the experiment resumable). Why this way: Tune installs its signal handlers only in the
    main thread and keeps the interrupt event of a run local to ``tune.run``, which takes it from
    ``ray.tune.tune._setup_signal_catching()`` (Ray 2.60; ``tests/study/test_early_confirmation.py`` checks it still
    does). That function is wrapped once so that, called from a thread registered here, it returns ``event``."""
    import ray.tune.tune as tune_module

    original = tune_module._setup_signal_catching  # noqa: SLF001
    if not getattr(original, "drl_tune_wrapped", False):
        def setup_signal_catching() -> threading.Event:
            event = _thread_events.get(threading.get_ident())
            return event if event is not None else original()

        setup_signal_catching.drl_tune_wrapped = True  # type: ignore[attr-defined]
        tune_module._setup_signal_catching = setup_signal_catching  # noqa: SLF001
    _thread_events[threading.get_ident()] = event
    try:
        yield
    finally:
        _thread_events.pop(threading.get_ident(), None)


def active() -> StopSignals | None:
    """The running study's stop signals (None: no study here, or off the main thread's block)."""
    return _active[-1] if _active else None


def stopping() -> str | None:
    """The name of the stop signal the running study got (None: none, or no study here)."""
    return _active[-1].name if _active and _active[-1].is_set() else None
