"""The one exception type the user sees as a message instead of a traceback."""


class UserError(Exception):
    """Something the user can fix: a bad path, a corrupt file, a prompt too long.

    The CLI prints ``str(error)`` on one line and exits non-zero; the TUI shows it
    in a notification. The message names the file (or the input) and the problem.
    """
