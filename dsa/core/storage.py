"""Files written so that a kill never leaves half of one, and caches that recompute what is damaged.

Every file this project writes (checkpoints, caches, reports) goes through `atomic_write`: the
content lands in a temporary file beside the target, which then replaces it in one rename. The
file ends with the mode any other new file gets (0666 less the process's umask: 0644 by
default), not the 0600 of a temporary file. `cached` is the one "load it if it is there and
sound, else compute and store it" rule.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

T = TypeVar("T")


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only
    read it by setting it, which another thread's new file could catch in between)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def new_directory_mode() -> int:
    """The mode mkdir() gives a new directory: 0777 less the umask."""
    return 0o777 & ~current_umask()


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a fresh temporary file beside `path`, then rename it over `path`.

    The temporary name is unique per call, so two writers never share (or delete) one. The file
    gets the mode of any new file (mkstemp's and safetensors' are 0600: others could not read it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, new_file_mode())  # after: a writer may replace tmp (safetensors makes its files 0600)
        with open(tmp, "rb+") as handle:  # on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def staged_directory(target) -> Iterator[Path]:
    """A private new directory beside `target` to fill; on success it takes `target`'s place.

    An existing `target` is moved aside and removed only once the new one is in place, so an
    interrupted write leaves the old directory or the new one, never a mix. On failure the
    staging directory (ours alone) is removed and `target` is untouched. The new directory keeps
    an existing `target`'s mode (a directory the user made 0755 or group-shared stays so), and
    otherwise gets a new directory's (mkdtemp's 0700 would lock others out).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if target.is_dir() else new_directory_mode()
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
        os.chmod(staging, mode)  # once filled: a read-only mode would have refused the files
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, old)  # onto our own empty directory
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def tensors_digest(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_tensors(tensors: dict, path) -> None:
    """safetensors with the content's checksum in its metadata (see load_tensors)."""
    save_file(tensors, path, metadata={"sha256": tensors_digest(tensors)})


def load_tensors(path) -> dict:
    """Tensors saved by save_tensors; raises ValueError when any byte of them changed."""
    with safe_open(path, framework="pt") as handle:
        expected = (handle.metadata() or {}).get("sha256")
    if expected is None:
        raise ValueError("it has no checksum (written by an older version)")
    tensors = load_file(path)
    if tensors_digest(tensors) != expected:
        raise ValueError("its content does not match its checksum")
    return tensors


def cached(path, load: Callable[[Path], T], compute: Callable[[], T], save: Callable[[T, Path], None],
           what: str) -> T:
    """`load(path)` when the entry exists and loads; otherwise `compute()`, stored atomically.

    `load` raises on a damaged entry (the caller's loader checks whatever it can), which is
    then recomputed and replaced with a warning.
    """
    path = Path(path)
    if path.exists():
        try:
            return load(path)
        except Exception as err:  # any damage: the entry is only a cache
            print(f"{what} cache {path} cannot be used ({err}); recomputing", file=sys.stderr)
    value = compute()
    atomic_write(path, lambda tmp: save(value, tmp))
    return value
