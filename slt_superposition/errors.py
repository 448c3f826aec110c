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


def describe_failure(err: BaseException) -> str:
    """'TypeName: first line of the message' (or just the type name): a user's function failing,
    reported on one line."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


# One rule for seeds and batch sizes, everywhere (train, llc, calibrate, the library):

MAX_SEED = 2**32 - 1  # seeds become uint32 PRNG seeds; larger ones would wrap around


def check_seed(seed, name: str = "seed") -> int:
    """A seed is a whole number in [0, 2**32 - 1]; returns it as an int, else `InputError`."""
    import numbers

    ok = isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED
    require(ok, f"{name} must be a whole number in [0, {MAX_SEED}], got {seed!r}")
    return int(seed)


def check_batch_size(batch_size, n: int | None = None, name: str = "batch_size") -> int:
    """A batch size is a whole number >= 1 and, drawn from n samples, at most n (never clipped)."""
    import numbers

    ok = isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool) and batch_size >= 1
    require(ok, f"{name} must be a positive whole number, got {batch_size!r}")
    if n is not None:
        require(batch_size <= n, f"{name} {batch_size} is larger than the number of samples n={n}")
    return int(batch_size)
