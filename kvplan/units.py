"""Parsing and printing of sizes: token counts ("128k"), byte amounts ("80GiB"), and their display.

Token counts use powers of two for k/M (128k = 131072 tokens), as model cards and serving engines do.
Byte amounts follow the unit written: GiB = 2**30 bytes, GB = 10**9 bytes.
"""

from __future__ import annotations

import math
import numbers
import re
from decimal import Decimal
from fractions import Fraction


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
    """Bad user input: the CLI prints the message on one line and exits with status 2.

    `argument`: the Python API argument the message starts with (e.g. "block_size"); the command line names
    it as its flag instead (`flag_message`: "--block-size ...").
    """

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument

    def flag_message(self) -> str:
        text = str(self)
        if self.argument and text.startswith(self.argument):
            return "--" + self.argument.replace("_", "-") + text[len(self.argument):]
        return text


MAX_TOKENS = 2**40  # beyond any context or batch a deployment holds (a trillion tokens): a typo, not a plan
MAX_BYTES = 2**60  # an exbibyte: beyond any GPU's memory
_BEYOND = 2**64  # past every maximum: a value beyond it is not computed exactly

_TOKEN_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}
_BYTE_SUFFIX = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3, "t": 1024**4, "tib": 1024**4,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


class MeasurementError(RuntimeError):
    """A measurement that contradicts itself or its hardware (e.g. faster than the peak): not a result to keep."""


def _argument(what: str) -> str | None:
    """`what` when it is a Python API argument name (context, block_size), which the CLI shows as a flag."""
    return what if what.isidentifier() else None


def _at_least(minimum: int) -> str:
    return "positive" if minimum == 1 else f"at least {minimum}"


def _exact(value, what: str, example: str, suffixes: dict[str, int]) -> tuple[Fraction, str]:
    """(the exact value, the unit suffix written) of a number or a text such as '4k' or '1e6'; floats and texts
    are read exactly, so '1e6' is 1000000 and '1e30' is 10^30, never a float artefact."""
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        raise InputError(f"{what} must be a number such as {example}, not {value!r}", _argument(what))
    if isinstance(value, numbers.Real) and not isinstance(value, str):
        if not math.isfinite(value):
            raise InputError(f"{what} must be a finite number, not {value!r}", _argument(what))
        return Fraction(value), ""
    match = _NUMBER.match(value)
    if not match or match.group(2).lower() not in suffixes:
        raise InputError(f"{what} must be a number such as {example}, not {value!r}", _argument(what))
    number, suffix = match.groups()
    written = Decimal(number)  # exact, whatever the exponent; compared before it becomes a whole number
    if written > _BEYOND:
        return Fraction(_BEYOND + 1), suffix
    if written and written.adjusted() < -30:  # 1e-400: no whole number, no amount
        return Fraction(1, 10**31), suffix
    return Fraction(written) * suffixes[suffix.lower()], suffix


def parse_count(value, what: str = "size", minimum: int = 1, maximum: int = MAX_TOKENS) -> int:
    """A whole number from minimum to maximum: an int, a whole float (4096.0), or a text such as '4096', '4k',
    '128k', '1M' (k = 1024, M = 1024**2) or '1e6' (whole only)."""
    exact, _ = _exact(value, what, "4096, 4k, 128k or 1M", _TOKEN_SUFFIX)
    if exact.denominator != 1:
        raise InputError(f"{what} must be a whole number, not {value!r}", _argument(what))
    if exact < minimum:
        raise InputError(f"{what} must be {_at_least(minimum)}, not {value!r}", _argument(what))
    if exact > maximum:
        raise InputError(f"{what} {value!r} is beyond {maximum:,}", _argument(what))
    return int(exact)


def parse_tokens(text: str | int, what: str = "size") -> int:
    """'4096', '4k', '128k', '1M', '1e6' -> a positive number of tokens (k = 1024, M = 1024**2), at most
    MAX_TOKENS."""
    return parse_count(text, what)


def parse_token_list(text: str, what: str = "size") -> list[int]:
    """'4k,32k,128k' -> [4096, 32768, 131072]."""
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise InputError(f"{what} is empty", _argument(what))
    return [parse_tokens(part, what) for part in parts]


def parse_bytes(text: str | int | float, what: str = "memory", minimum: int = 1) -> int:
    """'80GiB' -> 85899345920, '80GB' -> 80000000000, '79.5GiB' -> to the nearest byte; a bare number is bytes
    and must be whole (0.5 is no amount of memory: write 0.5GiB)."""
    exact, suffix = _exact(text, what, "80GiB, 141GB or 24e9", _BYTE_SUFFIX)
    if suffix.lower() in ("", "b") and exact.denominator != 1:
        raise InputError(f"{what} {text!r} is not a whole number of bytes; give a unit, e.g. {text}GiB",
                         _argument(what))
    value = round(exact)
    if value < minimum:
        raise InputError(f"{what} must be {_at_least(minimum)}, not {text!r}", _argument(what))
    if value > MAX_BYTES:
        raise InputError(f"{what} {text!r} is beyond {MAX_BYTES:,} bytes", _argument(what))
    return value


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

