"""Fixtures of the podcache Python tests: the writer process, a tmpfs directory, a watchdog.

The writer is crates/python/examples/pywriter.rs (podcache-writer), built by cargo; .ci/python
builds it first. PODCACHE_PYWRITER names another binary.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# A test that hangs (a recv holding the GIL, a lost wake-up) is ended by this bound: the
# process exits with a traceback of every thread, and the run fails.
WATCHDOG_SECONDS = int(os.environ.get("PODCACHE_TEST_WATCHDOG", "120"))


def _pywriter() -> Path:
    env = os.environ.get("PODCACHE_PYWRITER")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    exe = target / "release" / "examples" / "pywriter"
    if not exe.exists():
        subprocess.run(
            ["cargo", "build", "--release", "-p", "podcache-python", "--example", "pywriter"],
            cwd=REPO,
            check=True,
        )
    return exe


@pytest.fixture(scope="session")
def pywriter() -> Path:
    return _pywriter()


# The watchdog's traceback goes to the stderr pytest had before it captured output (this module
# is imported before any test runs), so it is seen even though the process ends at once.
_WATCHDOG_OUT = os.fdopen(os.dup(2), "w")


@pytest.fixture(autouse=True)
def watchdog():
    # A C thread of the interpreter: it fires even if a thread holds the GIL for ever.
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=_WATCHDOG_OUT)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def shm_dir():
    """A fresh directory on tmpfs (/dev/shm, as an emptyDir with medium Memory), removed after."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix="podcache-py-", dir=base)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


class Writer:
    """A running pywriter process; its stdout lines are collected by a thread (so its pipe
    never fills), and closing its stdin ends it."""

    def __init__(self, exe: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(exe), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.strip())
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<eof>")
            self.cond.notify_all()

    def wait_line(self, pred) -> str:
        """The first line (from the start) for which pred is true; waits for it."""
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                if "<eof>" in self.lines:
                    raise AssertionError(f"writer ended without that line: {self.lines[-5:]}")
                self.cond.wait()

    def last_line(self) -> str | None:
        with self.cond:
            return self.lines[-1] if self.lines else None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.thread.join()


@pytest.fixture
def start_writer(pywriter):
    started: list[Writer] = []

    def start(*args: str) -> Writer:
        w = Writer(pywriter, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def check_table_value(key: bytes, value: bytes) -> int:
    """The version of a pywriter table value; fails unless the value is whole and the key's."""
    body, crc = value[:-4], struct.unpack("<I", value[-4:])[0]
    assert zlib.crc32(body) == crc, f"checksum mismatch in the value of {key!r}"
    assert body[: len(key) + 1] == key + b"|", f"the value of {key!r} names another key"
    version = struct.unpack("<Q", body[len(key) + 1 : len(key) + 9])[0]
    index = int(key[1:])
    filler = body[len(key) + 10 :]
    assert len(filler) == (index * 31 + version * 17) % 300
    assert filler == bytes((index + version + j) & 0xFF for j in range(len(filler)))
    return version


def check_ring_message(msg: bytes) -> int:
    """The counter of a pywriter ring message; fails unless the message is whole."""
    body, crc = msg[:-4], struct.unpack("<I", msg[-4:])[0]
    assert zlib.crc32(body) == crc, "checksum mismatch in a message"
    counter = struct.unpack("<Q", body[:8])[0]
    filler = body[8:]
    assert len(filler) == (counter * 13) % 200
    assert filler == bytes((counter + j) & 0xFF for j in range(len(filler)))
    return counter
