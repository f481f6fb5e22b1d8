"""The results file of a sweep: one CSV row per finished configuration, written the moment it is done.

Each row goes out as one `write` of a whole line, then flush + fsync, so a kill at any moment leaves every
finished row on disk and at worst a torn last line, which `open_results` cuts off before appending.
`--resume` reads the rows already there and the sweep skips their keys.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

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


def read_rows(path: str | Path) -> list[dict]:
    """Complete rows of a results file, typed (a torn last line, from a kill mid-write, is left out)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{k: parse_cell(v) for k, v in row.items()} for row in rows if None not in row and None not in row.values()]


def check_out_folder(path: str | Path) -> None:
    """A results path must name a file in a folder that exists: a typo in --out creates no folders."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise InputError(f"--out {path}: folder {folder} does not exist; create it first or choose another --out")


class ResultsFile:
    """Appends rows with a fixed header; `done` holds the keys already in the file."""

    def __init__(self, path: str | Path, columns: list[str], resume: bool):
        self.path, self.columns = Path(path), list(columns)
        self.done: set[tuple[str, ...]] = set()
        check_out_folder(self.path)
        if self.path.exists() and self.path.stat().st_size and not resume:
            raise InputError(f"{self.path} already holds results: pass --resume to continue it, or choose another --out")
        if resume and self.path.exists() and self.path.stat().st_size:
            self._check_header()
            self._cut_torn_line()
            self.done = {row_key(row) for row in read_rows(self.path)}
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write(_line(self.columns))

    def _check_header(self) -> None:
        with self.path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        if header != self.columns:
            raise InputError(f"{self.path} has different columns from this version of kvplan profile; "
                             f"use another --out")

    def _cut_torn_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def _write(self, text: str) -> None:
        with self.path.open("a", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, row: dict) -> None:
        self._write(_line(row, self.columns))
        self.done.add(row_key(row))
