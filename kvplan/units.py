"""Parsing and printing of sizes: token counts ("128k"), byte amounts ("80GiB"), and their display.

Token counts use powers of two for k/M (128k = 131072 tokens), as model cards and serving engines do.
Byte amounts follow the unit written: GiB = 2**30 bytes, GB = 10**9 bytes.
"""

from __future__ import annotations

import re


def ceil_div(a: int, b: int) -> int:
    """a / b rounded up, for whole numbers (and numpy arrays of them: kvplan.grid)."""
    if not isinstance(a, int) and getattr(a, "dtype", None) is not None and a.dtype.kind == "f":
        import numpy

        return numpy.ceil(a / b)  # exact below 2**52, and floor division of floats is several times slower
    return -(-a // b)


# Estimator's batch-dependent formulas also run on a numpy array of batch sizes (kvplan.grid): these three
# take plain numbers as min/max/int do, and arrays elementwise, importing numpy only when given one. (min and
# max refuse arrays of several elements, whose truth is ambiguous; trying them first keeps plain numbers fast.)
def minimum(a, b):
    """min(a, b), elementwise for arrays."""
    try:
        return min(a, b)
    except ValueError:
        import numpy

        return numpy.minimum(a, b)


def maximum(a, b, *more):
    """max(a, b, ...), elementwise for arrays."""
    try:
        return max(a, b, *more)
    except ValueError:
        import numpy

        result = numpy.maximum(a, b)
        for value in more:
            result = numpy.maximum(result, value)
        return result


def whole(x):
    """int(x) of a non-negative amount; for an array, rounded down elementwise in its own dtype."""
    if isinstance(x, (int, float)):
        return int(x)
    import numpy

    return numpy.floor(x)


class InputError(ValueError):
    """Bad user input: the CLI prints the message on one line and exits non-zero."""


_TOKEN_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}
_BYTE_SUFFIX = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3, "t": 1024**4, "tib": 1024**4,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_tokens(text: str | int, what: str = "size") -> int:
    """'4096', '4k', '128k', '1M' -> a positive number of tokens (k = 1024, M = 1024**2)."""
    if isinstance(text, int):
        value = text
    else:
        match = _NUMBER.match(str(text))
        if not match or match.group(2).lower() not in _TOKEN_SUFFIX:
            raise InputError(f"{what} must be a positive number such as 4096, 4k, 128k or 1M, not {text!r}")
        number, suffix = match.groups()
        value = float(number) * _TOKEN_SUFFIX[suffix.lower()]
        if value != int(value):
            raise InputError(f"{what} must be a whole number, not {text!r}")
        value = int(value)
    if value <= 0:
        raise InputError(f"{what} must be positive, not {text!r}")
    return value


def parse_token_list(text: str, what: str = "size") -> list[int]:
    """'4k,32k,128k' -> [4096, 32768, 131072]."""
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise InputError(f"{what} is empty")
    return [parse_tokens(part, what) for part in parts]


def parse_bytes(text: str | int | float, what: str = "memory") -> int:
    """'80GiB' -> 85899345920, '80GB' -> 80000000000; a bare number is bytes."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _NUMBER.match(str(text))
        if not match or match.group(2).lower() not in _BYTE_SUFFIX:
            raise InputError(f"{what} must be an amount such as 80GiB, 141GB or 24e9, not {text!r}")
        number, suffix = match.groups()
        value = float(number) * _BYTE_SUFFIX[suffix.lower()]
    if value <= 0:
        raise InputError(f"{what} must be positive, not {text!r}")
    return int(value)


_SECONDS_SUFFIX = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "min": 60.0}


def parse_seconds(text: str | int | float, what: str = "time") -> float:
    """'2s' -> 2.0, '50ms' -> 0.05; a bare number is seconds."""
    match = _NUMBER.match(str(text))
    unit = match.group(2).lower() if match else None
    if unit not in _SECONDS_SUFFIX or float(match.group(1)) <= 0:
        raise InputError(f"{what} must be a positive time such as 2s, 50ms or 0.05, not {text!r}")
    return float(match.group(1)) * _SECONDS_SUFFIX[unit]


def format_tokens(tokens: int) -> str:
    """131072 -> '128k', 1048576 -> '1M', 5000 -> '5000'."""
    for suffix, scale in (("M", 1024**2), ("k", 1024)):
        if tokens >= scale and tokens % scale == 0:
            return f"{tokens // scale}{suffix}"
    return str(tokens)


def format_gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:,.2f}"

