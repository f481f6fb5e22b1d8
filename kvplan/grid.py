"""Many Estimator rows as one pandas DataFrame, computed one numpy array of batches at a time.

Estimator.row takes a numpy array of batch sizes as well as one (context, prompt and cached prefix stay plain
numbers): every batch-dependent figure comes back as an array, one element per batch, every other figure as
the plain value. kvplan.units' ceil_div/minimum/maximum/whole let the formulas take either, so one formula
serves a row and a million (kvplan.plan searches with it too).

Here batches are int64, so whole-number columns stay exact where FLOP counts pass 2**53; a grid whose
largest row holds a number past 2**62 goes row by row instead. Floating columns equal Estimator.row's to
within 1e-15 relative: numpy's pow rounds the last bit of a few results differently from Python's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .estimator import Estimator

INT64_SAFE = 2**62  # whole-number figures below this cannot overflow int64 anywhere in a row


def _fits_int64(row: dict) -> bool:
    return all(abs(v) < INT64_SAFE for v in row.values() if isinstance(v, int) and not isinstance(v, bool))


def _concatenate(parts: list, n: int) -> np.ndarray:
    """One column from per-chunk values (arrays of n, or a plain value standing for n equal entries), in the
    dtype pandas infers for the same values."""
    if not any(isinstance(p, np.ndarray) for p in parts):
        plain = np.array(parts, dtype=object if any(p is None or isinstance(p, str) for p in parts) else None)
        if plain.dtype == object and any(p is not None and not isinstance(p, str) for p in parts):
            plain = plain.astype(float)  # an encoder's empty decode beside numbers: NaN, as pandas makes it
        return np.repeat(plain, n)
    return np.concatenate([p if isinstance(p, np.ndarray) else np.full(n, np.nan if p is None else p) for p in parts])


def frame(estimators: Sequence[Estimator], contexts: Sequence[int], batches: Sequence[int],
          prompt: int | None = None):
    """The pandas DataFrame of every (estimator, context, batch) row, contexts outer and batches inner, as
    `pandas.DataFrame.from_records([e.row(b, c, prompt) for e in estimators for c in contexts for b in batches])`
    gives it, computed one batch array per (estimator, context)."""
    import pandas as pd

    batch_array = np.asarray(batches, dtype=np.int64)
    largest = [e.row(int(batch_array.max()), max(contexts), prompt) for e in estimators]
    # Whole-number figures grow with batch and context: the largest row bounds them all.
    if not all(_fits_int64(row) for row in largest):
        return pd.DataFrame.from_records([e.row(b, c, prompt) for e in estimators for c in contexts for b in batches])
    chunks = [e.row(batch_array, c, prompt) for e in estimators for c in contexts]
    columns = {name: _concatenate([chunk[name] for chunk in chunks], len(batch_array)) for name in chunks[0]}
    # Whole-number figures that went through a float (activation peaks) return to int64, exactly.
    for name in columns:
        if columns[name].dtype.kind == "f" and all(type(row[name]) is int for row in largest):
            columns[name] = columns[name].astype(np.int64)
    return pd.DataFrame(columns)
