"""Output files: checked before the work that fills them starts, and written whole or not at all.

`check_writable` refuses a path that cannot be written (no such folder, a folder, no permission) before a run
spends minutes measuring. `write_atomically` writes a temporary file beside the target, flushes it to disk
and renames it over the target, so a reader, a crash or Ctrl-C finds the old file or the new one, never half.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .units import InputError


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


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to a temporary file in `path`'s folder, flush it to disk, and rename it over
    `path`."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else _new_file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _new_file_mode() -> int:
    """The mode open() gives a new file (0o666 less the umask); mkstemp's own is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
