"""One exception type for every user-facing failure: the CLI prints its message on one line and exits non-zero."""


class EdgeclsError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class Interrupted(EdgeclsError):
    """Stopped by SIGINT/SIGTERM: exit 128 + the signal's number, as a shell reports a signalled command."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum
