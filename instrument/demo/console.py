"""The demo's console: lines that never tear a progress bar, and the bar itself.

On a terminal the bar is redrawn in place a few times a second and other lines
(alert transitions, the incident) are printed above it. When the output is a
pipe or a file (CI, the tests) there is no bar: a progress line every few
seconds instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO

from instrument.demo.traffic import Traffic

__all__ = ["Console", "Progress"]


class Console:
    """Thread-safe printing; :meth:`bar` keeps one redrawable line at the bottom."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._bar = ""
        self._lock = threading.Lock()

    def say(self, line: str = "") -> None:
        with self._lock:
            out = self.stream
            if self._bar:
                out.write("\r\033[K")
            out.write(line + "\n")
            if self._bar:
                out.write(self._bar)
            out.flush()

    def bar(self, text: str) -> None:
        with self._lock:
            self._bar = text
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def end_bar(self) -> None:
        with self._lock:
            if self._bar:
                self.stream.write("\r\033[K")
                self.stream.flush()
            self._bar = ""


class Progress:
    """Draws the traffic's progress and announces the incident's start and end."""

    def __init__(self, console: Console, traffic: Traffic, started: float, duration: float,
                 alert_state: Callable[[], str]) -> None:
        self.console = console
        self.traffic = traffic
        self.started = started  # time.monotonic() of the traffic start
        self.duration = duration
        self.alert_state = alert_state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)
        self._phase = "normal"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.console.end_bar()

    def _phase_lines(self, now: float) -> None:
        incident = self.traffic.incident
        if incident is None:
            return
        at = now - self.started
        if self._phase == "normal" and now >= incident[0]:
            self._phase = "incident"
            self.console.say(f"  traffic {at:5.1f}s  INCIDENT: half of the requests now hit"
                             " /error, /boom and /api/fail")
        elif self._phase == "incident" and now >= incident[1]:
            self._phase = "over"
            self.console.say(f"  traffic {at:5.1f}s  incident over: back to the normal mix")

    def _run(self) -> None:
        tick = 0.2 if self.console.tty else 0.1
        every = 1 if self.console.tty else int(5.0 / tick)
        recent: deque[tuple[float, int, int]] = deque()  # (time, sent, 5xx) for a 2 s rate
        n = 0
        while not self._stop.wait(tick):
            now = time.monotonic()
            self._phase_lines(now)
            t = self.traffic
            sent, errors = t.sent, t.server_errors
            recent.append((now, sent, errors))
            while len(recent) > 2 and now - recent[0][0] > (2.0 if self.console.tty else 5.0):
                recent.popleft()
            n += 1
            if n % every:
                continue
            rate5xx = 100.0 * (errors - recent[0][2]) / max(1, sent - recent[0][1])
            elapsed = now - self.started
            speed = sent / max(elapsed, 1e-9)
            alert = self.alert_state()
            if self.console.tty:  # at most 79 columns, so the line never wraps
                filled = int(16 * min(1.0, elapsed / self.duration))
                mark = " INCIDENT" if t.in_incident(now) else ""
                self.console.bar(f"  [{'#' * filled:<16}] {elapsed:4.1f}/{self.duration:g}s"
                                 f" {sent:6d} req {speed:4.0f}/s 5xx {rate5xx:3.0f}%{mark}"
                                 f" alert {alert}")
            else:
                self.console.say(f"  traffic {elapsed:5.1f}s  {sent} requests ({speed:.0f}/s),"
                                 f" 5xx {rate5xx:.0f}% over the last 5s, alert: {alert}")
