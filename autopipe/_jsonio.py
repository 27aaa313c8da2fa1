"""Atomic file writing and schema-checked JSON reading, shared by every file format."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from autopipe._file_kinds import wrong_kind
from autopipe.errors import AutopipeError


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temp file and ``os.replace``.

    A crash mid-write leaves the old file (or none), never a half-written one.
    The output is deterministic: sorted keys are not used (field order is part
    of the format), but the same data always gives the same bytes.

    Raises:
        AutopipeError: the file cannot be written there (a directory, no permission).
    """
    path = Path(path)
    try:
        _write(path, data)
    except OSError as e:
        raise AutopipeError(f"{path}: cannot write ({e.strerror or e})",
                            hint="write to a file in a directory you can write to") from None


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise early (before minutes of work) when ``path`` can clearly not be written.

    Raises:
        AutopipeError: ``path`` is a directory, or a parent of it is a file.
    """
    path = Path(path)
    if path.is_dir():
        raise AutopipeError(f"{path}: cannot write (is a directory)", hint="name a file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AutopipeError(f"{path}: cannot write ({parent} is a file)",
                                    hint="write to a file in a directory")
            return


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temp file's path next to ``path``; on success it is synced and renamed to ``path``.

    What every file autopipe writes goes through: a crash mid-write leaves the old file
    (or none), never a half-written one; on an error the temp file is removed.

    A symlink is followed: its target is replaced (the temp file made next to the target,
    so the rename stays on one file system) and the link kept. A path that exists and is
    not a regular file or a directory (``/dev/null``, a FIFO, a socket) is yielded itself,
    to be written in place: there is nothing there a rename could keep whole, and a rename
    would put a plain file where the device or pipe was.
    """
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    if path.is_symlink():  # realpath stops at a loop
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = stat.S_IFREG  # not there (yet): made by the rename below
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        yield str(path)
        return
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write(path: Path, data: Any) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=False)
        f.write("\n")


def read_json(
    path: str | os.PathLike[str], schema: str, error: type[AutopipeError]
) -> dict[str, Any]:
    """Read a JSON file and check its ``"schema"`` field.

    Raises:
        error: the file is missing, not JSON, not an object, or of another schema.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file", hint="check the path") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})", hint="check the path") from None
    if not text.strip():
        raise error(f"{path}: the file is empty",
                    hint="autopipe writes every file whole (a temp file renamed into place): this "
                         "one was made otherwise; write it again with the command that makes it")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno})",
            hint="the file is corrupt or truncated; regenerate it",
        ) from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}",
                    hint="regenerate the file")
    found = data.get("schema")
    other = wrong_kind(str(path), found, schema) if found != schema else None
    if other is not None:
        raise error(other[0], hint=other[1])
    if found != schema:
        raise error(
            f"{path}: schema is {found!r}, expected {schema!r}",
            hint=f"pass a file written by autopipe with schema {schema}",
        )
    return data


_REQUIRED: Any = object()


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for errors: null, true, false, number, string, array, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def as_object(value: Any, name: str) -> dict[str, Any]:
    """``value`` if it is a JSON object.

    Raises:
        TypeError: it is not; the message names ``name`` (a reader's ``malformed`` error
            carries it, where ``None.items()`` gave an AttributeError naming nothing).
    """
    if not isinstance(value, dict):
        raise TypeError(f"'{name}' is {json_type(value)}, expected an object")
    return value


def as_array(value: Any, name: str) -> Sequence[Any]:
    """``value`` if it is a JSON array.

    Raises:
        TypeError: it is not; the message names ``name``.
    """
    if not isinstance(value, (list, tuple)):  # a tuple: from_json of a to_json in memory
        raise TypeError(f"'{name}' is {json_type(value)}, expected an array")
    return value


def object_field(data: dict[str, Any], key: str, default: Any = _REQUIRED, *, where: str = "") -> dict[str, Any]:
    """``data[key]``, a JSON object; ``default`` where it is absent (a KeyError without one).

    Raises:
        KeyError: absent, with no default. TypeError: present and not an object (``null`` too).
    """
    if key not in data and default is not _REQUIRED:
        return dict(default)
    return as_object(data[key], f"{where}{key}")


def array_field(data: dict[str, Any], key: str, default: Any = _REQUIRED, *, where: str = "") -> Sequence[Any]:
    """``data[key]``, a JSON array; ``default`` where it is absent (a KeyError without one).

    Raises:
        KeyError: absent, with no default. TypeError: present and not an array (``null`` too).
    """
    if key not in data and default is not _REQUIRED:
        return list(default)
    return as_array(data[key], f"{where}{key}")
