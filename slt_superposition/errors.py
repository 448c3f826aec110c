"""User-facing errors.

Anything a user can get wrong (a bad argument, a foreign file, NaN weights) raises
`InputError` with a one-line message naming the problem. The CLI prints it as
``error: <message>`` and exits with status 2, never with a traceback.
"""


class InputError(ValueError):
    """Bad input from the user: the message is shown as is, on one line."""


def require(condition: bool, message: str) -> None:
    """Raise `InputError(message)` unless `condition` holds."""
    if not condition:
        raise InputError(message)
