"""Paths users give: checked in one line before any work, so no run fails after the expensive part."""
from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from .errors import UserError


def check_input_file(file, what: str = "") -> Path:
    """An existing regular file: a FIFO or a device (a link to /dev/zero) would block or never end."""
    path = Path(file).expanduser()
    label = f"{what} {path}" if what else str(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"missing file: {label}")
    except OSError as err:
        raise UserError(f"{label}: cannot read it ({err.strerror or err})")
    if stat.S_ISDIR(mode):
        raise UserError(f"{label}: is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise UserError(f"{label}: not a regular file (a pipe, socket or device)")
    return path


def check_output_dir(directory, what: str) -> Path:
    """Fail in one line, before any work, when `directory` cannot be created or written.

    Check now, create later: nothing is made here (the writer makes the directory when it
    writes its first file), so a setting refused after this check leaves no empty directory
    behind. The nearest existing folder on the way must be a directory we can write in.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: exists and is not a directory")
    if path.is_symlink() and not path.exists():
        raise UserError(f"{what} {path}: a link to nothing ({path.readlink()})")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):  # an unnamed file: nothing is left behind
            pass
    except OSError as err:
        raise UserError(f"{what} {path}: cannot write there ({err.strerror or err})")
    return path


def check_new_output_dir(directory, what: str, advice: str) -> Path:
    """The same for a directory that must not hold another run's files: one that exists and is
    not empty is refused (`advice` says what to do instead), so no file of an earlier run is
    replaced, or left beside new ones as if it were theirs."""
    path = check_output_dir(directory, what)
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{what} {path}: exists and is not empty; {advice}")
    return path


def check_output_file(file, what: str) -> Path:
    """The same for a file about to be written: its directory must be writable, it not a directory."""
    path = Path(file)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory")
    check_output_dir(path.parent if str(path.parent) else ".", what)
    return path
