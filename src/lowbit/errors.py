"""The one error type users see: a message that says what is wrong and how to fix it."""


class LowbitError(Exception):
    """A problem with the user's input; the CLI prints it on one line and exits with code 2."""
