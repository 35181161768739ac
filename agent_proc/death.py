"""Tie the agent process's life to its parent: a parent-death signal, checked once after it is set."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` when our parent (the forkserver) exits; exit now if it already has.

    The forkserver exits as soon as every holder of its alive-pipe's write end is gone. Each forked child
    inherits that end (so it could start processes itself); an agent never does, so it closes its copy, and
    the forkserver then ends with the supervisor, even when the supervisor is SIGKILLed. Socket EOF is the
    second line of defence.
    """
    _release_forkserver_fds()
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def _release_forkserver_fds() -> None:
    from multiprocessing import forkserver, resource_tracker

    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    tracker = resource_tracker._resource_tracker
    if tracker._fd is not None:
        os.close(tracker._fd)
        tracker._fd = None


def name_process(name: str) -> None:
    """Show the agent's name in `ps -o comm`/`top` (the kernel keeps 15 bytes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(f"ll:{name}".encode()[:15]), 0, 0, 0)
