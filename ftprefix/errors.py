"""The one exception type that means "the user gave bad input", as opposed to a bug."""


class UserError(Exception):
    """Bad input the user can fix. The CLI prints its message on one line and exits with code 2.

    Raise it before anything is written: callers rely on a UserError leaving no trace on disk.
    """

    exit_code = 2
