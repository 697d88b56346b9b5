"""How the command-line tools report bad input: one line naming the file / record / array and the
reason, a non-zero exit status, no traceback.

A tool raises `InputError` (or a subclass: `RecordError`, the converters' `ConversionError`)
for anything the user can fix, wraps library calls whose errors are about the user's files in
`input_errors(...)`, and runs its ``main`` through `run`:

    def main(argv):
        require_flags("inputs", "output")
        with input_errors(ValueError, OSError):
            model, cfg = load_model(...)

    if __name__ == "__main__":
        run(main, "score")

Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from qwen25vl_jax.atomic_write import atomic_path

EXIT_INPUT_ERROR = 2
# Errors that are about the user's files whatever raised them (their message names the path).
FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


class InputError(ValueError):
    """Bad input the user can fix. ``str()``: one line naming the file / record / array and
    the reason."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (its type name when it has none)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


@contextlib.contextmanager
def input_errors(*types: type[BaseException], prefix: str = "") -> Iterator[None]:
    """Re-raises the listed exception types raised inside as `InputError` (same message,
    ``prefix`` in front): for library calls whose failures are about the user's input."""
    try:
        yield
    except InputError:
        raise
    except types as err:
        raise InputError(f"{prefix}{one_line(err)}") from None


def require_flags(*names: str) -> None:
    """`InputError` naming the first of the absl flags ``names`` that was not given (absl's own
    required-flag check prints two lines and the flag's internals)."""
    from absl import flags

    for name in names:
        if flags.FLAGS[name].value in (None, "", []):
            raise InputError(f"--{name} is required")


def check_output_file(path: str) -> None:
    """`InputError` unless ``path`` can be created: its directory exists and it is not a
    directory (checked before any model is loaded or run)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{path}: output directory {parent} does not exist")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a file name")


def write_npz(path: str, **arrays) -> None:
    """``np.savez`` through a temporary file renamed onto ``path``: a killed or failed run
    leaves no half-written output."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def handle(main: Callable, prog: str, errors: tuple[type[BaseException], ...] = ()) -> Callable:
    """``main`` wrapped so that `InputError`, `FILE_ERRORS`, absl usage errors and ``errors``
    print ``PROG: error: MESSAGE`` (one line) on stderr and exit with status 2."""
    from absl import app

    caught = (InputError, app.UsageError, *FILE_ERRORS, *errors)

    def wrapped(argv):
        try:
            return main(argv)
        except caught as err:
            print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_INPUT_ERROR)

    return wrapped


def parse_flags(prog: str) -> Callable:
    """An absl ``flags_parser`` that reports a bad flag on one line (absl prints two, and a
    config file that fails to load as a whole traceback): the error's first line and its last
    (the exception), exit status 2."""

    def parse(argv):
        from absl import flags

        try:
            argv_left = flags.FLAGS(argv)
        except flags.Error as err:
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or ["bad flags"]
            message = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            # ml_collections' --config.a.b=value overrides raise these for a key the config
            # lacks or a value of the wrong type
            message = f"cannot parse the flags: {type(err).__name__}: {one_line(err)}"
        else:
            return argv_left
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INPUT_ERROR)

    return parse


def run(main: Callable, prog: str, errors: tuple[type[BaseException], ...] = ()) -> None:
    """`absl.app.run` of ``main`` through `handle`, flags parsed by `parse_flags`."""
    from absl import app

    app.run(handle(main, prog, errors), flags_parser=parse_flags(prog))
