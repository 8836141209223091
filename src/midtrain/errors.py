"""User-facing errors.

A `MidtrainError` is bad input or a refused operation: the CLI prints its message as one line
(`error: ...`) and exits with code 2. The message names the field (or file) and the fix.
"""


class MidtrainError(Exception):
    """A one-line, user-facing error (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
