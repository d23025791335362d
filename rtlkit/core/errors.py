"""The errors a user sees instead of a traceback deep in torch."""
from __future__ import annotations

import math
import numbers


class ConfigError(ValueError):
    """A bad setting, raised before any compute starts."""


class DatasetNotFound(FileNotFoundError):
    """A dataset is not on this machine; the message names the ways to get it."""


class NoSpace(OSError):
    """The disk filled while an artefact was written; the message names the folder."""


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def is_int(v) -> bool:
    """A whole number that is not a bool (True is an int to Python, never a count here)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A real number that is not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(name: str, v, low: int | None = None) -> None:
    check(is_int(v) and (low is None or v >= low),
          f"{name} must be a whole number{f' >= {low}' if low is not None else ''}, not {v!r}")


def check_real(name: str, v, low: float | None = None, high: float | None = None, low_open: bool = False) -> None:
    ok = is_real(v) and math.isfinite(v) and (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)
    rng = "" if low is None and high is None else \
        f" in {'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
    check(ok, f"{name} must be a {'finite ' if is_real(v) and not math.isfinite(v) else ''}number{rng}, not {v!r}")


def check_notebooks(only, names) -> None:
    """``--only`` prefixes checked against the notebooks' names: one that matches none is a
    ConfigError naming them (before, it did nothing and exited 0)."""
    names = list(names)
    bad = [o for o in only or () if not any(n.startswith(o) for n in names)]
    check(not bad, f"--only {' '.join(bad)} matches no notebook; the notebooks are {', '.join(names)}")


def cli(prog: str, main):
    """Run a command-line entry point: rtlkit's own errors and the user-input ones (a missing or
    unreadable file named on the command line) print one ``prog: message`` line on stderr and
    exit with status 2, never a traceback. Anything else is a bug, and keeps its traceback."""
    import sys

    def run(argv=None) -> int:
        try:
            return main(argv)
        except (ConfigError, DatasetNotFound, NoSpace) as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
    run.__doc__ = main.__doc__
    return run
