"""The one error type users see: a problem with their config or their input."""


def first_line(err: Exception) -> str:
    """The first line of an exception's message (its type's name when it has none), for a one-line report."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class UserError(Exception):
    """Bad config or input. The CLI prints ``str(err)`` on one line and exits with code 2."""

    exit_code = 2


def shown(value, limit: int = 80) -> str:
    """``repr(value)`` for an error line, at most ``limit`` characters whatever the value (a long
    string, a list of a million items): longer ones are cut, with '...' at the cut."""
    import reprlib

    limits = reprlib.Repr()
    limits.maxstring = limits.maxother = limits.maxlong = limit
    limits.maxlist = limits.maxtuple = limits.maxdict = limits.maxset = 12
    limits.maxlevel = 3
    short = limits.repr(value)
    return short if len(short) <= limit else short[:limit - 3] + "..."
