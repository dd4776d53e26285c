"""The one error type library code raises for bad input; the CLI turns it into one line and exit code 2."""


class LaffiError(Exception):
    """A user-facing error. The message names the file (and field) at fault and fits on one line."""
