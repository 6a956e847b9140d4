"""SIGTERM handled as Ctrl-C, and a few lines that a signal must not cut short.

`timeout`, `docker stop`, systemd and batch schedulers stop a program with SIGTERM, and
Python's default for it is to die at once, losing whatever the Ctrl-C paths would have
kept (a partial JSON, a playable video, whole JSON lines). Under terminate_as_interrupt()
a SIGTERM raises Terminated instead, a KeyboardInterrupt, so that every `except
KeyboardInterrupt` and `finally` that keeps work for Ctrl-C keeps it for SIGTERM too;
utils.cli.run_cli catches it and exits with 128 + 15, the status of a process stopped by
SIGTERM.

    with terminate_as_interrupt():
        main(args)                  # SIGTERM -> Terminated, Ctrl-C -> KeyboardInterrupt

    with deferred_interrupts():     # e.g. finishing a video file and moving it into place
        ...                         # a Ctrl-C or SIGTERM here is raised at the end of the block

train.py does not use these: it stops itself after the current step (utils.train_state.StopSignal),
and puts the handlers found here back when it returns.
"""
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The exit status of a process stopped by SIGTERM (the shell's 128 + signal number).
EXIT_TERMINATED = 128 + signal.SIGTERM
# The signals that stop a run and that deferred_interrupts holds back.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as KeyboardInterrupt is for Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by signal {signum} ({signal.Signals(signum).name})")
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _raise_for(signum):
    """What a stop signal raises: KeyboardInterrupt for SIGINT, Terminated for SIGTERM."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _in_main_thread():
    # Python lets only the main thread set signal handlers.
    return threading.current_thread() is threading.main_thread()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread;
    the previous handler comes back afterwards. A SIGTERM that was ignored (SIG_IGN, e.g.
    by nohup-like launchers) stays ignored. Outside the main thread this does nothing."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold back Ctrl-C and SIGTERM for the length of the block, then raise the first one
    that came (KeyboardInterrupt or Terminated) when it ends, unless the block raised.

    For a few lines that must finish once started (closing a video and moving it into
    place): an exception between them would lose the whole file. Only the handlers that
    raise (Python's Ctrl-C handler, terminate_as_interrupt's) are held back; an ignored or
    default disposition is left as it is. Outside the main thread this does nothing.
    """
    if not _in_main_thread():
        yield
        return
    received = []
    previous = {}

    def hold(signum, frame):
        received.append(signum)

    for sig in STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if handler in (signal.default_int_handler, _raise_terminated):
            previous[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        _raise_for(received[0])
