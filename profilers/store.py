"""The results file of a sweep: one CSV row per finished configuration, on disk the moment it is done.

The file is checked before any measuring starts and rewritten whole through kvplan.files.write_atomically
after each row, so a kill at any moment leaves every finished row on disk and never half a file. `--resume`
reads the rows already there and the sweep skips their keys; a torn last line (left by versions that
appended) is cut off.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from kvplan.files import check_writable, write_atomically
from kvplan.units import InputError

# What makes two rows the same measurement: a resumed run skips rows whose key it already holds.
KEY_FIELDS = ("model", "attention", "batch", "context", "kv_dtype", "layers")


def row_key(row: dict) -> tuple[str, ...]:
    """Key of a row, as strings so rows read back from CSV match rows built in memory."""
    return tuple(str(row.get(field, "")) for field in KEY_FIELDS)


def _line(values: list, fields: list[str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(values if fields is None else [_cell(values.get(f)) for f in fields])
    return buffer.getvalue()


def rows_text(columns: list[str], rows: list[dict]) -> str:
    """A whole results file: the header and each row's cells in `columns` (keys outside them left out)."""
    return _line(columns) + "".join(_line(row, columns) for row in rows)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def parse_cell(text: str):
    """A CSV cell back to the value written: '' -> None, 'True'/'False' -> bool, numbers -> int or float."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a CSV text file; choose another --out") from None
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None


def read_rows(path: str | Path) -> list[dict]:
    """Complete rows of a results file, typed (a torn last line, from a kill mid-write, is left out)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    text = _text(path)
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{k: parse_cell(v) for k, v in row.items()} for row in rows if None not in row and None not in row.values()]


class ResultsFile:
    """Rows with a fixed header, the whole file rewritten atomically per row; `done` holds the keys in it."""

    def __init__(self, path: str | Path, columns: list[str], resume: bool):
        self.path, self.columns = check_writable(path), list(columns)
        self.done: set[tuple[str, ...]] = set()
        has_rows = self.path.exists() and self.path.stat().st_size > 0
        if has_rows and not resume:
            raise InputError(f"{self.path} already holds results: pass --resume to continue it, or choose another --out")
        self.text = _line(self.columns)
        if has_rows:
            text = _text(self.path)
            if next(csv.reader(io.StringIO(text)), []) != self.columns:
                raise InputError(f"{self.path} has different columns from this version of kvplan profile; "
                                 f"use another --out")
            self.text = text[: text.rfind("\n") + 1]  # a torn last line is measured again
            self.done = {row_key(row) for row in read_rows(self.path)}
        write_atomically(self.path, self.text)

    def append(self, row: dict) -> None:
        self.text += _line(row, self.columns)
        write_atomically(self.path, self.text)
        self.done.add(row_key(row))
