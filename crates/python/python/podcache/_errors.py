"""The exceptions of podcache, each with the meaning of the Rust reader's error of that name.

Every one derives from :class:`Error` and has a ``path`` attribute: the file's path for errors
of opening it, ``None`` for errors of a get or receive.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every podcache error."""

    path: str | None = None


class FileNotFound(Error, FileNotFoundError):
    """No file at the path: the writer has not created it yet (or the path is wrong).

    Also a :class:`FileNotFoundError` (``errno`` is ``ENOENT``). Transient: waiting
    (``wait=`` of ``Table`` and ``Subscriber``) retries it.
    """


class NotReady(Error):
    """The file exists, but its creator has not finished initialising it (or died doing so).

    Transient: waiting (``wait=``) retries it.
    """


class VersionMismatch(Error):
    """The file was written with another layout version than this package reads.

    ``found`` is the file's version, ``expected`` this package's. The message says what to do;
    the sidecar's HTTP API reads every layout the sidecar writes.
    """

    found: int
    expected: int


class WrongKind(Error):
    """The file holds another kind of structure (a ring where a table was expected, ...)."""


class Corrupt(Error):
    """The file holds what no podcache writer produces (bad header, bad checksum, impossible
    offsets, truncated): detected, never served."""


class Foreign(Corrupt):
    """Not a podcache file at all (no podcache magic, or not a regular file).

    A subclass of :class:`Corrupt`, as the Rust reader reports it as ``OpenError::Corrupt``.
    """


class Contended(Error):
    """A get gave up: the writer recycled the very record it was copying on every retry.

    Transient: getting again retries.
    """


class Overrun(Error):
    """A receive gave up: the writer overwrote the oldest message on every retry before it
    could be copied. Transient: receiving again retries."""


# Shown as podcache.<Name> in tracebacks, where users import them from.
for _cls in (Error, FileNotFound, NotReady, VersionMismatch, WrongKind, Corrupt, Foreign, Contended, Overrun):
    _cls.__module__ = "podcache"
del _cls
