"""A crash-safe, append-only JSONL store: what ``eval`` (``results.jsonl``) and ``optimize`` (its caches) resume from.

Every record is one JSON object on one line, written with a single ``write``, flushed and ``os.fsync``'d before
:meth:`JsonlStore.append` returns (the folder too, when the file is new), so a record that was appended survives a
crash of the process or the machine. A crash *during* an append can leave a torn last line: bytes without their
newline, or a last line that does not parse (a cut multi-byte character, zero bytes left by the file system).
Opening the store drops that line with a warning and truncates it away, so later appends start on a clean line and
the record is simply computed again. An unparsable line anywhere else is not a torn write but corruption (an edit,
two writers, a disk fault): :class:`StoreCorruptError` names the file and the line, and nothing is truncated.

Examples:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.jsonl"
    >>> store = JsonlStore(path)
    >>> store.append({"id": "a", "x": 1})
    >>> _ = path.open("a").write('{"id": "b", "x"')  # a crash in the middle of the next append
    >>> store.load()
    {'a': {'id': 'a', 'x': 1}}
    >>> store.append({"id": "b", "x": 2})
    >>> sorted(store.load())
    ['a', 'b']
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["JsonlStore", "StoreCorruptError"]


class StoreCorruptError(ValueError):
    """A line before the last one of a JSONL store is not a JSON object: corruption, not a torn write."""


class JsonlStore:
    """An append-only JSONL file of JSON objects, durable per record (see the module docstring).

    Args:
        path: The file; it and its folder are created on the first :meth:`append`.
        key: The field naming a record in :meth:`load`.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self._lock = threading.Lock()

    def records(self) -> list[dict[str, Any]]:
        """Every record, in file order, after dropping (and truncating away) a torn last line.

        Raises:
            StoreCorruptError: A line other than the last one is not a JSON object (``file:line`` in the message).
        """
        with self._lock:
            return [record for _, record in self._read()]

    def load(self) -> dict[str, dict[str, Any]]:
        """The records by :attr:`key` (the first record of a key wins), as :meth:`records` reads them.

        Raises:
            StoreCorruptError: A middle line is not a JSON object, or a record has no :attr:`key`.
        """
        with self._lock:
            found: dict[str, dict[str, Any]] = {}
            for number, record in self._read():
                if self.key not in record:
                    raise StoreCorruptError(f"{self.path}:{number}: record has no {self.key!r} field")
                found.setdefault(record[self.key], record)
            return found

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, durably (flushed and fsync'd before returning)."""
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            new = not self.path.exists()
            if new:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(line)
            if new:
                _fsync_dir(self.path.parent)

    def _write(self, line: bytes) -> None:
        with self.path.open("ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _read(self) -> list[tuple[int, dict[str, Any]]]:
        """``(line number, record)`` pairs; repairs a torn last line in place."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")  # the last item holds the bytes after the final newline (b"" when none)
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        found, start = [], 0
        for i, line in enumerate(lines):
            offset, start = start, start + len(line) + 1
            if not line.strip():
                continue
            complete = i < len(lines) - 1
            record, problem = None, "no newline at its end"
            if complete:
                try:
                    record = json.loads(line)
                    problem = "" if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
                except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError on a cut character
                    problem = f"unparsable: {exc}"
            if not problem:
                found.append((i + 1, record))
            elif i == last:
                self._truncate(offset, f"{self.path}:{i + 1}: dropped a torn last line ({len(line)} bytes, "
                                       f"{problem}) left by an interrupted write; it will be computed again")
                break
            else:
                raise StoreCorruptError(f"{self.path}:{i + 1}: {problem}. The file is corrupted before its last "
                                        "line (not a torn write): repair or remove that line, then rerun")
        return found

    def _truncate(self, size: int, message: str) -> None:
        logger.warning(message)
        with self.path.open("r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a new file's directory entry durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a folder
        logger.debug("fsync of folder %s failed: %s", folder, exc)
    finally:
        os.close(fd)
