"""Read podcache tables and rings from shared memory.

podcache maps one file on a volume the containers of a Pod share (an ``emptyDir``, tmpfs) as a
lock-free key-value table or broadcast ring. A writer (the ``podcache`` sidecar, or a program
linking ``podcache-writer``) owns the file; this package is the reader: it opens the file
read-only (``O_RDONLY``, ``PROT_READ``, so the volume may be mounted ``readOnly: true``), never
writes to it, and copies every value or message out of shared memory, validated (checksum and
generation re-checked) before it is returned as ``bytes``.

>>> import podcache
>>> with podcache.Table("/shared/web.table") as table:          # doctest: +SKIP
...     table.get("index.html")                                  # bytes, or None
...     table.get_many([b"a", b"b"])                             # [bytes | None, ...]
>>> sub = podcache.Subscriber("/shared/events.ring", start="newest")   # doctest: +SKIP
>>> for msg in sub:                                               # doctest: +SKIP
...     print(len(msg), "bytes; lost so far:", sub.lost)
"""

from ._errors import (
    Contended,
    Corrupt,
    Error,
    FileNotFound,
    Foreign,
    NotReady,
    Overrun,
    VersionMismatch,
    WrongKind,
)
from ._podcache import Subscriber, Table

__all__ = [
    "Table",
    "Subscriber",
    "Error",
    "FileNotFound",
    "NotReady",
    "VersionMismatch",
    "WrongKind",
    "Corrupt",
    "Foreign",
    "Contended",
    "Overrun",
]
