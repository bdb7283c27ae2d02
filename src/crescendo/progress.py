"""Step-by-step progress lines with an estimate of the time left, on stderr.

A `Steps` reporter knows the steps of a job in advance, each with an estimated cost in seconds that the
caller may refine as measurements arrive (an evaluation's seconds per window tell what the next
evaluation will cost). At the start of every step it prints one line: the step, its number, the time
elapsed and an estimate of the time left. It is silent when disabled (`--quiet`) and when its stream is
not a terminal, so logs and pipes stay clean.

>>> import io
>>> out = io.StringIO()
>>> steps = Steps(["load", "evaluate"], {"load": 2.0, "evaluate": 8.0}, stream=out, enabled=True, force=True)
>>> steps.start("load"); steps.start("evaluate"); steps.done()
>>> print(out.getvalue().splitlines()[0])
[1/2] load (0 s elapsed, about 10 s left)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO


class Steps:
    """Progress of a job made of known steps (names in order, estimated seconds each)."""

    def __init__(self, names: Sequence[str], estimates: Mapping[str, float], *, stream: TextIO | None = None,
                 enabled: bool = True, force: bool = False, prefix: str = "") -> None:
        self.names = list(names)
        self.estimates = {n: float(estimates.get(n, 0.0)) for n in self.names}
        self.stream = stream if stream is not None else sys.stderr
        self.show = enabled and (force or self.stream.isatty())
        self.prefix = prefix
        self.begun = time.perf_counter()
        self.taken: dict[str, float] = {}  # step -> seconds it took
        self._current: str | None = None
        self._since = self.begun

    def estimate(self, name: str, seconds: float) -> None:
        """Refine the estimated cost of a step not yet finished."""
        if name not in self.taken:
            self.estimates[name] = max(0.0, float(seconds))

    def left(self) -> float:
        """Seconds the remaining steps are estimated to take (the current one counts what is left of it)."""
        rest = sum(self.estimates[n] for n in self.names if n not in self.taken and n != self._current)
        if self._current is not None:
            rest += max(0.0, self.estimates[self._current] - (time.perf_counter() - self._since))
        return rest

    def start(self, name: str) -> None:
        """Finish the current step (its time is kept) and start `name`, printing its progress line."""
        self._finish()
        self._current, self._since = name, time.perf_counter()
        if self.show:
            elapsed = time.perf_counter() - self.begun
            print(f"{self.prefix}[{self.names.index(name) + 1}/{len(self.names)}] {name} "
                  f"({elapsed:.0f} s elapsed, about {self.left():.0f} s left)", file=self.stream, flush=True)

    def done(self) -> None:
        """Finish the last step."""
        self._finish()

    def _finish(self) -> None:
        if self._current is not None:
            self.taken[self._current] = time.perf_counter() - self._since
            self._current = None

    @property
    def total(self) -> float:
        return time.perf_counter() - self.begun
