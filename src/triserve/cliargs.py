"""One style for every `triserve` subcommand's flags: parser, value checks, output checks.

Every subcommand builds its parser with `parser()`: defaults shown in `--help`, descriptions
kept as written, and a user error printed as one line (``triserve demo: --speed: must be
above 0, got 0; …``) with exit status 2, never a usage dump or a traceback. The value types
(`positive_float`, `log_level`, …) name what is wrong and what to give instead; outputs are
checked with `writable_file` / `writable_dir` before a run starts, so a long run never fails
at its last step. Standard library only: the agent, the operator and the tools all use it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended to every flag's help; descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # Flags whose help already states the default, or has none worth showing, keep theirs.
        no_default = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if "default" in text.lower() or no_default:
            return text
        return super()._get_help_string(action)


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the flag, then exit status 2."""

    def __init__(self, prog: str, description: str, **kwargs: object) -> None:
        super().__init__(prog=prog, description=description, formatter_class=_Formatter, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """Print ``prog: message (see prog --help)`` and exit 2."""
        print(f"{self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def parser(prog: str, description: str) -> Parser:
    """The parser for subcommand `prog` (e.g. ``triserve demo``)."""
    return Parser(prog, description)


def fail(prog: str, message: str) -> int:
    """Print one error line for `prog`; returns the exit status 2 for `main` to return."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (a speed, a duration, an interval)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A number of 0 or more (0 usually switches the feature off)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def count_at_most(limit: int) -> Callable[[str], int]:
    """A `positive_int` no larger than `limit` (a count that sizes work or memory)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}, got {text}")
        return value

    return parse


def positive_int(text: str) -> int:
    """A whole number of 1 or more (a count of workers, seeds, points)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0-65535, got {text}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    """A logging level name, any case; returned upper case."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def setup_logging(level: str, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """Configure the root logger once, at `level` (validated by `log_level`)."""
    logging.basicConfig(level=level, format=fmt)


def writable_file(path: Path, flag: str) -> None:
    """Raise `UserError` unless `path` can be written (its folder exists and takes files).

    Leaves an existing file untouched and no new file behind.
    """
    if path.is_dir():
        raise UserError(f"{flag}: {path} is a directory; give a file name inside it")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{flag}: folder {folder} does not exist; create it or choose another")
    _probe(folder, flag)


def writable_dir(path: Path, flag: str) -> None:
    """Create `path` (and its parents) if needed; raise `UserError` unless files fit in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{flag}: cannot create folder {path} ({exc.strerror}); choose another"
        ) from None
    _probe(path, flag)


def _probe(folder: Path, flag: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".triserve-probe-"):
            pass
    except OSError as exc:
        raise UserError(
            f"{flag}: cannot write in {folder} ({exc.strerror}); choose another"
        ) from None
