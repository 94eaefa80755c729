"""What a person sees while stanhier works: one tqdm display per stage.

Four stages can take long enough to need a display:

* compiling a Stan program (:func:`compiling`): elapsed time while the C++ compiler
  runs, a single ``cached`` line when the program is already compiled;
* NUTS sampling (:class:`SamplingProgress`): iterations done of the total across
  chains, whether the chains are in warmup or sampling, elapsed and remaining time;
* ML optimization (:class:`Spinner`): a spinner with the number of log-density
  evaluations, shown only when the optimization takes more than a second;
* bootstrap refits (:class:`TaskProgress`): refits done of the total, elapsed and
  remaining time.

Every display goes to stderr through :mod:`tqdm.auto` (a widget in notebooks) and is
switched off with ``progress=False``. What the engines print themselves (pystan's
``Building...``, Stan's ``Gradient evaluation took ...``, cmdstanpy's log lines) is
kept off the console unless the user asks for it (``verbose=True``, ``--debug``, or
``STANHIER_VERBOSE=1``); it goes to the ``stanhier`` logger at DEBUG level.

Example
-------
>>> with compiling(False) as stage:   # progress=False: no output at all
...     stage.cached()
>>> bar = SamplingProgress(chains=2, iter=100, warmup=50, enabled=False)
>>> bar.update(150); bar.phase
'sampling'
>>> bar.close()
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["compiling", "CompileStage", "SamplingProgress", "TaskProgress", "Spinner", "verbose", "verbose_output", "VERBOSE_ENV",
           "LOG_INTERVAL", "logger"]

#: Environment variable that turns the engines' own console output back on (``1``/``true``).
VERBOSE_ENV = "STANHIER_VERBOSE"

logger = logging.getLogger("stanhier")


_VERBOSE = threading.local()


def verbose() -> bool:
    """Whether the engines' own output (pystan, httpstan, CmdStan) is shown: inside
    :func:`verbose_output` or with ``STANHIER_VERBOSE=1``."""
    if getattr(_VERBOSE, "on", False):
        return True
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def verbose_output(on: bool = True) -> Iterator[None]:
    """Show the engines' own console output inside the block (``brm(..., verbose=True)``)."""
    saved = getattr(_VERBOSE, "on", False)
    _VERBOSE.on = bool(on) or saved
    try:
        yield
    finally:
        _VERBOSE.on = saved


def _console_stream():
    """A stream on the console's stderr that stays there while the compiler's file descriptors
    are redirected to its log (a duplicate of descriptor 2); ``sys.stderr`` where there is none."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return sys.stderr
    return os.fdopen(os.dup(fd), "w", buffering=1)


#: Seconds between redraws of a display nobody watches live (stderr redirected to a file, as in
#: CI logs): a few lines a minute instead of several a second.
LOG_INTERVAL = 30.0


def _watched(tqdm_class, file) -> bool:
    """Whether a display goes to a person: a notebook widget or a terminal."""
    if tqdm_class.__module__.startswith("tqdm.notebook"):
        return True
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def _tqdm(**kwargs):
    from tqdm.auto import tqdm

    if kwargs.get("file") is None:
        kwargs["file"] = sys.stderr  # bound now: later redirections of sys.stderr do not move the bar
    kwargs.setdefault("leave", True)
    kwargs.setdefault("dynamic_ncols", True)
    if not _watched(tqdm, kwargs["file"]):
        kwargs["mininterval"] = LOG_INTERVAL
    return tqdm(**kwargs)


class CompileStage:
    """The display of one compile; :func:`compiling` makes it.

    Shows ``Compiling Stan program: 00:12`` (ticking every half second while the compiler
    runs; every :data:`LOG_INTERVAL` seconds where stderr is a file) and ends with
    ``00:41, done``; :meth:`cached` ends it at once with ``cached``.
    """

    def __init__(self, enabled: bool, desc: str, show_cached: bool = True) -> None:
        self.enabled = enabled
        self.desc = desc
        self.show_cached = show_cached
        self.start = time.perf_counter()
        self.was_cached = False
        self._bar = None
        self._stream = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._once: list[str] = []

    def _open(self) -> None:
        if not self.enabled or self._bar is not None:
            return
        self._stream = _console_stream()
        self._bar = _tqdm(total=None, desc=self.desc, bar_format="{desc}: {elapsed}{postfix}", mininterval=0.5,
                          file=self._stream)
        self._thread = threading.Thread(target=self._tick, name="stanhier-compile-progress", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self._bar.mininterval if self._bar is not None else 0.5):
            bar = self._bar
            if bar is not None:
                bar.refresh()

    def building(self, what: str | None = None) -> None:
        """The compiler runs now: show the ticking display (``what`` names the step)."""
        self._open()
        if self._bar is not None and what:
            self._bar.set_postfix_str(what, refresh=True)

    def also(self, what: str) -> Callable[[], None]:
        """A callback for when the compile also builds ``what``, a file every program shares:
        the step then reads ``C++, and <what> and ..., once per installation``."""
        def show() -> None:
            self._once.append(what)
            self.building("C++, and " + " and ".join(self._once) + ", once per installation")
        return show

    def cached(self) -> None:
        """The program was compiled before: one ``cached`` line."""
        self.was_cached = True
        if not self.enabled or (self._bar is None and not self.show_cached):
            return
        if self._bar is None:
            _tqdm(total=None, desc=f"{self.desc}: cached", bar_format="{desc}").close()
            return
        self._finish("cached")

    def _finish(self, text: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.close()
            self._bar = None
        if self._stream is not None and self._stream is not sys.stderr:
            self._stream.close()
        self._stream = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def close(self, ok: bool) -> None:
        if self.was_cached:
            return
        self._finish("done" if ok else "failed")


@contextmanager
def compiling(enabled: bool, desc: str = "Compiling Stan program", *,
              show_cached: bool = True) -> Iterator[CompileStage]:
    """A compile stage's display (nothing when ``enabled`` is false).

    The display appears when the caller says the compiler runs (:meth:`CompileStage.building`)
    or that the program is cached (:meth:`CompileStage.cached`; no line if ``show_cached`` is
    false, for quick fits such as ``lmer`` that would otherwise print it every time).
    """
    stage = CompileStage(enabled, desc, show_cached)
    ok = False
    try:
        yield stage
        ok = True
    finally:
        stage.close(ok)


class SamplingProgress:
    """Iterations done of ``chains * iter`` across chains, in warmup or sampling.

    ``update(done, phase)`` takes the running total over the chains; ``phase`` is
    ``'warmup'`` or ``'sampling'`` when the engine says which, else it is inferred
    (all chains past warmup once ``done > chains * warmup``).
    """

    def __init__(self, chains: int, iter: int, warmup: int, enabled: bool = True, file=None) -> None:
        self.chains, self.iter, self.warmup = int(chains), int(iter), int(warmup)
        self.total = self.chains * self.iter
        self.done = 0
        self.phase = "warmup" if self.warmup > 0 else "sampling"
        self._bar = None
        if enabled:
            self._bar = _tqdm(total=self.total, desc=self._desc(), unit="it", mininterval=0.25, file=file,
                              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                         "[{elapsed}<{remaining}]")

    def _desc(self) -> str:
        chains = f"{self.chains} chain{'s' if self.chains != 1 else ''}"
        return f"Sampling {chains} ({self.phase})"

    def update(self, done: int, phase: str | None = None) -> None:
        """Set the iterations done across chains (a running total) and, if known, the phase."""
        done = max(0, min(int(done), self.total))
        new_phase = phase or ("sampling" if done > self.chains * self.warmup else "warmup")
        if new_phase != self.phase:
            self.phase = new_phase
            if self._bar is not None:
                self._bar.set_description_str(self._desc(), refresh=False)
        if self._bar is not None and done != self.done:
            self._bar.update(done - self.done)
        self.done = done

    def close(self, ok: bool = True) -> None:
        if self._bar is None:
            return
        if ok:
            self.phase = "done"
            self._bar.set_description_str(self._desc(), refresh=False)
            if self.done < self.total:
                self._bar.update(self.total - self.done)
                self.done = self.total
        self._bar.close()
        self._bar = None


class TaskProgress:
    """``done/total`` tasks (e.g. bootstrap refits) with elapsed and remaining time.

    >>> bar = TaskProgress(10, "Parametric bootstrap", unit="refits", enabled=False)
    >>> bar.update(4); bar.done
    4
    >>> bar.close()
    """

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True, file=None) -> None:
        self.total, self.desc, self.done = int(total), desc, 0
        self._bar = None
        if enabled:
            self._bar = _tqdm(total=self.total, desc=desc, unit=unit, mininterval=0.25, file=file,
                              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} " + unit
                                         + " [{elapsed}<{remaining}]")

    def update(self, n: int = 1) -> None:
        """``n`` more tasks done."""
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(int(n))

    def close(self, ok: bool = True) -> None:
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc} {'done' if ok else 'stopped'}", refresh=False)
            self._bar.close()
            self._bar = None


class Spinner:
    """A spinner with an evaluation count, shown only after ``delay`` seconds.

    >>> with Spinner(enabled=False) as spin:
    ...     spin.tick()
    >>> spin.count
    1
    """

    FRAMES = "|/-\\"

    def __init__(self, desc: str = "ML optimization", enabled: bool = True, delay: float = 1.0,
                 unit: str = "evaluations") -> None:
        self.desc = desc
        self.count = 0
        self._bar = None
        self._frame = 0
        if enabled:
            self._bar = _tqdm(total=None, desc=f"{desc} {self.FRAMES[0]}", delay=delay, unit=unit,
                              mininterval=0.2, bar_format="{desc}: {n_fmt} " + unit + " [{elapsed}]")

    def tick(self, n: int = 1) -> None:
        """Count ``n`` more evaluations."""
        self.count += n
        if self._bar is not None:
            self._frame = (self._frame + 1) % len(self.FRAMES)
            self._bar.set_description_str(f"{self.desc} {self.FRAMES[self._frame]}", refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc} done", refresh=False)
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Spinner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
