"""Atomic output files: a temporary file beside the target, flushed to disk, then one rename onto it.

POSIX `rename` replaces the target in one step, so a reader sees the previous file or the new one,
never half of one. The temporary file is `.<name>.<pid>.tmp` in the target's folder (the same
filesystem, so the rename never copies). Any failure removes it; an OSError (no space left, quota,
permission, I/O), also one raised inside a library (torch.save reports a full disk as a RuntimeError
caused by the OSError), becomes a :class:`WriteError`: one line naming the file and saying that the
previous file is intact. Temporary files of processes that died mid-write are removed by
:func:`remove_stale_temps`.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


class WriteError(OSError):
    """An output that could not be written; the message names the file and what is left of it."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


def temp_path(path: str | Path) -> Path:
    """Where `path` is written before the rename: `.<name>.<pid>.tmp` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _behind(exc: BaseException | None, kind: type) -> BaseException | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def os_error_behind(exc: BaseException | None) -> OSError | None:
    """The OSError that `exc` is or was caused by (torch, OpenCV and numpy wrap them), else None."""
    return _behind(exc, OSError)


def write_error(e: OSError, path: Path, kept: str) -> WriteError:
    """One line: what went wrong, the file, and what is intact (`kept`)."""
    if isinstance(e, WriteError):
        return e
    if e.errno == errno.ENOSPC:
        reason = "no space left on device"
    else:
        text = e.strerror or str(e) or type(e).__name__
        reason = text[:1].lower() + text[1:]
    return WriteError(f"{reason} writing {path}; {kept}", e.errno)


def _kept(path: Path, existed: bool) -> str:
    return f"the previous {path.name} is intact" if existed else f"no {path.name} was written"


def _open_temp(tmp: Path, mode: str, encoding: str | None) -> IO:
    """Create the temporary file (O_EXCL: never through a link someone left there)."""
    exclusive = mode.replace("w", "x")
    try:
        return open(tmp, exclusive, encoding=encoding)
    except FileExistsError:  # left by a dead process that had our pid
        tmp.unlink()
        return open(tmp, exclusive, encoding=encoding)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (where the platform allows; the rename is atomic either way)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _failed(exc: BaseException, tmp: Path, path: Path, kept: str) -> BaseException:
    """Clean up after a failed write: the exception to raise. Ctrl-C stays a KeyboardInterrupt even where
    a library wrapped it (torch.save turns one raised in its write callback into a RuntimeError); an
    OSError behind becomes a WriteError."""
    _discard(tmp)
    interrupt = _behind(exc, KeyboardInterrupt)
    if interrupt is not None:
        return interrupt
    cause = os_error_behind(exc)
    return exc if cause is None else write_error(cause, path, kept)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None,
                 durable: bool = True) -> Iterator[IO]:
    """`with atomic_write(p) as f: f.write(...)`: `f` is a temporary file that replaces `p` on success.

    mode: "wb" or "w" (text, `encoding`). On any failure `p` is left as it was and the temporary file is
    removed; an OSError becomes a WriteError naming `p`. durable: fsync before the rename, so that even a
    power loss leaves the old file or the new one (False: atomic against crashes and full disks only,
    for many small files that a last durable one vouches for).
    """
    path = Path(path)
    kept = _kept(path, path.exists())
    tmp = temp_path(path)
    try:
        f = _open_temp(tmp, mode, encoding)
    except OSError as e:
        raise write_error(e, path, kept) from None
    try:
        with f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException as e:
        err = _failed(e, tmp, path, kept)
        if err is e:
            raise
        raise err from None
    if durable:
        _fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path for a library that writes a file by name (e.g. `torch.onnx.export`).

    On success the file written there is flushed and renamed onto `path`; on failure it is removed.
    """
    path = Path(path)
    kept = _kept(path, path.exists())
    tmp = temp_path(path)
    _discard(tmp)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        err = _failed(e, tmp, path, kept)
        if err is e:
            raise
        raise err from None
    _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Write `data` to `path` atomically (:func:`atomic_write`); returns the path."""
    with atomic_write(path, durable=durable) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, durable: bool = True) -> Path:
    """Write `text` to `path` atomically, as UTF-8; returns the path."""
    return write_bytes(path, text.encode("utf-8"), durable)


def write_files(contents: Mapping[str | Path, bytes | str]) -> list[Path]:
    """Write several files so that none is replaced unless all could be written.

    Every file goes to its temporary file first (a full disk fails there, and then no target changes);
    only then are they renamed onto their targets. str contents are written as UTF-8.
    """
    items = [(Path(p), d.encode("utf-8") if isinstance(d, str) else d) for p, d in contents.items()]
    kept = f"none of the {len(items)} files was changed" if len(items) > 1 else None
    written: list[tuple[Path, Path]] = []
    path = None
    try:
        for path, data in items:
            tmp = temp_path(path)
            written.append((tmp, path))
            with _open_temp(tmp, "wb", None) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:
        for tmp, _ in written:
            _discard(tmp)
        interrupt = _behind(e, KeyboardInterrupt)
        if interrupt is not None and interrupt is not e:
            raise interrupt from None
        cause = None if interrupt is not None else os_error_behind(e)
        if cause is None:
            raise
        raise write_error(cause, path, kept or _kept(path, path.exists())) from None
    for tmp, path in written:
        os.replace(tmp, path)
    for folder in {p.parent for _, p in written}:
        _fsync_dir(folder)
    return [p for p, _ in items]


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files (`.<name>.<pid>.tmp`) that processes no longer running left in `folder`.

    A write that was cut (kill -9, a crash, a power loss) leaves its temporary file; the target itself is
    the previous version, intact. Returns the files removed.
    """
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    removed = []
    for p in entries:
        m = _TEMP.match(p.name)
        if m and not _running(int(m["pid"])) and (p.is_file() or p.is_symlink()):
            _discard(p)
            removed.append(p)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # called before this process writes: a file with our pid is a dead namesake's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except (OverflowError, ValueError, OSError):
        return False  # not a process id
    return True
