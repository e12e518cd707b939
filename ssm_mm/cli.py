"""What the project's command-line scripts share: the exit statuses decided for the whole project
(0 done, 2 bad input, 75 interrupted but resumable, 1 an unexpected crash with its traceback) and
the one-line error, without a traceback, on bad input."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

EXIT_DONE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 75


def exits_2_on(prefix: str, *errors: type[Exception]) -> Callable:
    """Decorator making ``fn`` a script's ``main``: the wrapped call returns :data:`EXIT_DONE` when
    ``fn`` returns (whatever it returns), and :data:`EXIT_BAD_INPUT` after printing the one line
    ``"{prefix}: {message}"`` on stderr when it raises one of ``errors``. Other exceptions (a crash)
    and argparse's own exits pass through."""

    def wrap(fn: Callable[..., object]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(*args, **kwargs) -> int:
            try:
                fn(*args, **kwargs)
            except errors as e:
                print(f"{prefix}: {e}", file=sys.stderr)
                return EXIT_BAD_INPUT
            return EXIT_DONE

        return main

    return wrap
