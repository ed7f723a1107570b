"""Type stubs of the extension module podcache._podcache (built from crates/python/src)."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Iterable, Literal

_Key = bytes | str
_Path = str | os.PathLike[str]

class Table:
    """A podcache key-value table, opened read-only.

    Gets are lock-free and never write to the file; each value is copied out of shared memory
    and validated (record checksum, generation re-checked) before it is returned, so a get
    racing with the writer returns the old or the new value, never a mix. Keys are ``bytes``
    or ``str`` (its UTF-8 bytes).

    ``wait``: seconds to retry a missing or not-ready file (``None``: no limit), with the GIL
    released; ``0`` (the default): fail at once.

    One ``Table`` may be used from several threads (its reader sits behind a lock that the GIL
    keeps uncontended); opening one per thread is as cheap.
    """

    def __init__(self, path: _Path, *, wait: float | None = 0.0) -> None: ...
    def get(self, key: _Key) -> bytes | None:
        """The value of ``key``, or ``None`` if absent or expired."""
    def get_many(self, keys: Iterable[_Key]) -> list[bytes | None]:
        """The values of ``keys`` in order; the keys' memory accesses overlap."""
    def __contains__(self, key: _Key) -> bool: ...
    def __getitem__(self, key: _Key) -> bytes:
        """The value of ``key``; ``KeyError`` if absent."""
    def keys(self) -> list[bytes]:
        """The live keys (each slot read once: keys put or deleted meanwhile may be missed)."""
    def stats(self) -> dict[str, int]:
        """The writer's statistics, kept in the file: items, bytes_used, bytes_capacity,
        puts, deletes, evictions, expirations, clears."""
    def counters(self) -> dict[str, int]:
        """This reader's own counters, kept in this process: hits, misses, retries."""
    @property
    def writer_epoch(self) -> int:
        """1 for the creator, +1 for each writer that re-attached after a restart."""
    @property
    def path(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def is_retired(self) -> bool:
        """Whether the writer replaced this file by a new one at the same path."""
    def file_replaced(self) -> bool:
        """Whether the path names another file now (one ``stat``: call it now and then)."""
    def reopen(self, *, wait: float | None = 0.0) -> None:
        """Open the path again (after the file was replaced); on error keep the old file."""
    def close(self) -> None:
        """Unmap the file; later calls raise ``ValueError``."""
    def __enter__(self) -> Table: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

class Subscriber:
    """A read-only subscriber of a podcache broadcast ring.

    It reads the messages in order with its own cursor, kept in this process: the writer
    never waits for it. A subscriber that falls more than a ring behind is lapped: it jumps to
    the oldest intact message, and ``lost`` / ``laps`` tell how many messages it lost and how
    often. Each message is copied out and validated (sequence, checksum) before it is returned.

    ``start``: ``"oldest"`` (the oldest message in the ring) or ``"newest"`` (the next one
    published). ``wait`` as for :class:`Table`.

    Iterating blocks for each next message (Ctrl-C interrupts it). While ``recv`` waits, the
    GIL is released; another thread using the same subscriber meanwhile gets
    ``RuntimeError`` (use one subscriber per thread).
    """

    def __init__(
        self,
        path: _Path,
        start: Literal["oldest", "newest"] = "oldest",
        *,
        wait: float | None = 0.0,
    ) -> None: ...
    def recv(self, timeout: float | None = None) -> bytes | None:
        """The next message, waiting up to ``timeout`` seconds (``None``: as long as it
        takes; ``0``: poll) with the GIL released; ``None`` if none came."""
    def try_recv(self) -> bytes | None:
        """The next message if one is there now, else ``None``. Never blocks."""
    def __iter__(self) -> Subscriber: ...
    def __next__(self) -> bytes: ...
    def skip_to_newest(self) -> None:
        """Skip everything not yet read."""
    @property
    def lost(self) -> int:
        """Messages lost to laps since this subscriber opened."""
    @property
    def laps(self) -> int:
        """Times this subscriber was lapped."""
    @property
    def last_seq(self) -> int | None:
        """Sequence number of the last message received (the first message of a ring is 1)."""
    @property
    def last_lost(self) -> int | None:
        """Messages lost just before the last message received."""
    @property
    def max_message(self) -> int:
        """Largest message the ring carries."""
    @property
    def backlog_bytes(self) -> int:
        """Bytes published and not yet read (more than the ring holds: about to be lapped)."""
    @property
    def writer_epoch(self) -> int: ...
    def is_retired(self) -> bool: ...
    @property
    def path(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None:
        """Unmap the file; later calls raise ``ValueError``."""
    def __enter__(self) -> Subscriber: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
