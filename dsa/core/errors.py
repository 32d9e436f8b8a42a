"""The one exception type that reaches users as a one-line message instead of a traceback."""
import functools
import sys


class UserError(Exception):
    """Bad input or a missing asset: the message says what is wrong and how to fix it."""


def exits_cleanly(main):
    """Wrap a CLI entry point: UserError -> one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
