"""Output files of profile and calibrate: checked before any measuring starts, and written atomically.

`check_writable` refuses an output path that cannot be written (no such folder, a folder, no permission)
before a run spends minutes measuring. `write_atomically` writes a temporary file beside the target and
renames it over the target, so a reader (or a killed run) sees the old file or the new one, never half.
A sweep's results file holds one CSV row per finished configuration, rewritten that way the moment each row
is done, so a kill at any moment leaves every finished row on disk. `--resume` reads the rows already there
and the sweep skips their keys; a torn last line (left by older versions, which appended) is cut off.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
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


def check_writable(path: str | Path, flag: str = "--out") -> Path:
    """`path` if a file can be written there: its folder exists (a typo creates no folders), it is no folder,
    and the folder (and the file, where it exists) take writes. Checked by creating and removing a file."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: folder {folder} does not exist; create it first or choose another {flag}")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name in it")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{flag} {path}: the file is not writable")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as error:
        raise InputError(f"{flag} {path}: cannot write in {folder} ({error.strerror or error})") from None
    return path


def write_atomically(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file in `path`'s folder, flush it to disk, and rename it over `path`."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
