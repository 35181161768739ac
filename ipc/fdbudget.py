"""The file-descriptor budget of a process that accepts connections.

At start the supervisor raises its soft RLIMIT_NOFILE to the hard limit (`raise_nofile_limit`); a reserve of
descriptors is kept free for what must never fail for want of one: spawning and restarting agents (a socket and
two pipes to the forkserver per spawn, then the agent's connection and its exit sentinel), the forkserver's
alive-pipe, the control socket's own listening socket and log files. Listeners (the control socket, webhook
servers) ask `fd_budget().exhausted()` before accepting: when it says so they stop accepting (pending connections
wait in the kernel's backlog) and look again shortly after; nothing crashes and nothing already accepted is
dropped.
"""

from __future__ import annotations

import errno
import os
import resource

# Descriptors always kept free, whatever the number of agents: the listening sockets, a log file, the forkserver's
# pipes, a spawn in progress, the database of the run history.
BASE_RESERVE = 32
# Descriptors kept free per agent: its connection and exit sentinel, plus one spawn (socket + 2 pipes) when it
# restarts.
PER_AGENT_RESERVE = 6
# Descriptors one spawn needs free in the supervisor (the forkserver's socket and two pipes, with margin).
SPAWN_FDS = 8


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (before, after). Children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


def open_fds() -> int:
    """The number of descriptors this process has open (Linux: /proc/self/fd). Listing it needs one descriptor
    itself: when none is left the answer is the limit."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return nofile_limit()
        raise


class FdBudget:
    """How many descriptors listeners may use: the soft limit minus the reserve."""

    def __init__(self) -> None:
        # Invariant: the number of agents of the running systems of this process (each adds PER_AGENT_RESERVE).
        self.agents = 0

    @property
    def reserve(self) -> int:
        return BASE_RESERVE + PER_AGENT_RESERVE * self.agents

    def headroom(self) -> int:
        """Descriptors still free for new connections (negative once the reserve is being used)."""
        return nofile_limit() - self.reserve - open_fds()

    def exhausted(self) -> bool:
        """Whether a listener should stop accepting now."""
        return self.headroom() <= 0

    def check_spawn(self) -> None:
        """Raise OSError(EMFILE) when a spawn could run out of descriptors half-way: the forkserver exits when a
        request breaks off after it connected, so the supervisor checks before it connects."""
        free = nofile_limit() - open_fds()
        if free < SPAWN_FDS:
            raise OSError(errno.EMFILE, f"too many open files: {free} descriptors free, a spawn needs {SPAWN_FDS}")


_budget = FdBudget()


def fd_budget() -> FdBudget:
    """The process's budget (one per process: descriptors are per process)."""
    return _budget
