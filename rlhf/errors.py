"""The one error type users see: a problem with their config or their input."""


class UserError(Exception):
    """Bad config or input. The CLI prints ``str(err)`` on one line and exits with code 2."""

    exit_code = 2
