"""No fork while a kit thread is inside SQLite: shared sections, taken exclusively by os.fork.

A thread that is inside SQLite when another thread forks leaves SQLite's in-process
mutexes and its lock bookkeeping for the file held in the child, by a thread that does
not exist there, so the child's own connections to that file hang or find it locked
forever (gunicorn ``--preload`` forking workers while the alert manager, the collector
or the dashboard reads the store). Every SQLite use in the kit therefore runs inside
:func:`sqlite_section`, and an ``os.register_at_fork`` hook waits until no section is
open before the fork happens.

Sections are shared: readers and writers in different threads never wait for each
other here (SQLite arbitrates between them). Only a fork takes the guard exclusively:
it stops new sections from starting and waits for open ones to close. A thread that
forks from inside its own section does not wait for itself (its connection is not
mid-statement while it calls ``os.fork``), and sections nest. If open sections do not
close within :data:`FORK_WAIT` seconds (a thread that waits for something the forking
thread holds), the fork goes ahead rather than hanging the parent, with a warning.

The cost is two uncontended lock round trips per section; sections wrap connection
opening, a query with its fetches, or a whole transaction, never the request path.
"""

from __future__ import annotations

import logging  # imported before our hook is registered: its fork hook runs after ours
import os
import threading
import time

__all__ = ["FORK_WAIT", "fork_pending", "sqlite_section"]

FORK_WAIT = 30.0  # seconds a fork waits for open sections before going ahead anyway
log = logging.getLogger("instrument")


class _Guard:
    """Shared/exclusive state of one process (a child starts a fresh one, see ``_guard``)."""

    __slots__ = ("cond", "forker", "inside", "late", "lock", "pid", "waiting")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.lock = threading.Lock()  # sections use it directly: cheaper than the condition
        self.cond = threading.Condition(self.lock)
        self.inside: dict[int, int] = {}  # thread ident -> nesting depth
        self.forker: int | None = None  # the thread holding the guard for its fork
        self.waiting = 0  # sections waiting for a fork to finish
        self.late: list[int] = []  # idents still inside when a fork gave up waiting

    def enter(self, me: int) -> None:
        self.lock.acquire()
        try:
            depth = self.inside.get(me, 0)
            if not depth:  # a nested section is already inside: it must not wait
                while self.forker is not None and self.forker != me:
                    self.waiting += 1
                    try:
                        self.cond.wait()
                    finally:
                        self.waiting -= 1
            self.inside[me] = depth + 1
        finally:
            self.lock.release()

    def leave(self, me: int) -> None:
        self.lock.acquire()
        try:
            depth = self.inside.pop(me) - 1
            if depth:
                self.inside[me] = depth
            elif self.forker is not None:
                self.cond.notify_all()
        finally:
            self.lock.release()

    def before_fork(self, me: int) -> bool:
        """Take the guard for a fork by thread ``me``; False if another fork kept it."""
        deadline = time.monotonic() + FORK_WAIT
        with self.cond:
            while self.forker is not None:  # another thread is forking right now
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            self.forker = me
            while any(t != me for t in self.inside):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.late = [t for t in self.inside if t != me]
                    break
                self.cond.wait(left)
            return True

    def after_fork_in_parent(self) -> list[int]:
        with self.cond:
            late, self.late = self.late, []
            self.forker = None
            self.cond.notify_all()
            return late


_guards: dict[int, _Guard] = {}
_taken: dict[int, bool] = {}  # forking thread -> whether its before-fork hook took the guard


def _guard() -> _Guard:
    """This process's guard; a forked child gets a new one on first use.

    The child's at-fork hooks may start kit threads before ours runs (hook order is
    import order), so the pid check rather than the hook decides. ``setdefault`` is
    atomic under the GIL: racing threads in a new child all end up with the same guard.
    """
    pid = os.getpid()
    guard = _guards.get(pid)
    if guard is None:
        guard = _guards.setdefault(pid, _Guard(pid))
        for stale in list(_guards):  # list() copies atomically; others may prune too
            if stale != pid:
                _guards.pop(stale, None)  # the parent's, copied into this child
    return guard


class sqlite_section:  # lower case: used like a function, ``with sqlite_section():``
    """Run the block (SQLite calls, and fetches of the cursors it opens) with no fork inside."""

    __slots__ = ("guard", "me")

    def __enter__(self) -> None:
        self.guard = _guard()
        self.me = threading.get_ident()
        self.guard.enter(self.me)

    def __exit__(self, *exc: object) -> None:
        # In a child forked from inside this section, the parent's guard is a copy nobody
        # else uses (its lock may even have been held by a thread that is gone): skip it.
        if self.guard.pid == os.getpid():
            self.guard.leave(self.me)


def fork_pending() -> bool:
    """Whether a fork holds (or waits for) the guard: new sections in other threads wait."""
    return _guard().forker is not None


def _before_fork() -> None:
    me = threading.get_ident()
    _taken[me] = _guard().before_fork(me)


def _after_fork_in_parent() -> None:
    if not _taken.pop(threading.get_ident(), False):
        log.warning("instrument: a fork went ahead while another fork held the SQLite guard")
        return
    late = _guard().after_fork_in_parent()
    if late:
        log.warning("instrument: forked while %d thread(s) were still inside SQLite after"
                    " %.0fs; the child may find the store locked", len(late), FORK_WAIT)


def _after_fork_in_child() -> None:
    _taken.clear()
    _guard()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
