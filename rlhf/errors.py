"""The one error type users see: a problem with their config or their input."""


def first_line(err: Exception) -> str:
    """The first line of an exception's message (its type's name when it has none), for a one-line report."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class UserError(Exception):
    """Bad config or input. The CLI prints ``str(err)`` on one line and exits with code 2."""

    exit_code = 2
