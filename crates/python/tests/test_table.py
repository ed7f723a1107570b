"""podcache.Table against a table a Rust writer process (pywriter) keeps rewriting."""

from __future__ import annotations

import errno
import os
import shutil
import struct

import pytest

import podcache
from conftest import check_table_value

KEYS = 500


def start_table(start_writer, path, keys=KEYS):
    w = start_writer("table", str(path), str(keys))
    w.wait_line(lambda line: line == "round 1")
    return w


def test_reads_never_torn_while_the_writer_rewrites(shm_dir, start_writer):
    path = shm_dir / "t.table"
    w = start_table(start_writer, path)
    names = [b"k%05d" % i for i in range(KEYS)]
    seen = {k: 0 for k in names}
    checked = 0
    passes = 0
    with podcache.Table(path) as table:
        first_max = None
        # Read until every key was seen at a version three rounds past the newest one of the
        # first pass: the writer rewrote every key several times during these reads.
        while True:
            passes += 1
            if passes % 2:
                values = [table.get(k if i % 2 else k.decode()) for i, k in enumerate(names)]
            else:
                values = table.get_many(names)
            for k, v in zip(names, values):
                assert v is not None, f"{k!r} missing"
                version = check_table_value(k, v)
                # One reader's gets of one key never go back in time.
                assert version >= seen[k], f"{k!r}: version {version} after {seen[k]}"
                seen[k] = version
                checked += 1
            if first_max is None:
                first_max = max(seen.values())
            if min(seen.values()) >= first_max + 3 and passes >= 10:
                break
        assert all(k in table for k in names[:50])
        assert b"absent" not in table
        assert table.get("absent") is None
        stats = table.stats()
        assert stats["items"] == KEYS
        assert stats["puts"] >= KEYS * 3
        assert table.counters()["hits"] >= checked
        assert sorted(table.keys()) == names
    assert w.proc.poll() is None, "the writer died while we read"


def test_keys_are_bytes_or_str(shm_dir, start_writer):
    path = shm_dir / "t.table"
    start_table(start_writer, path, keys=10)
    table = podcache.Table(str(path))
    assert check_table_value(b"k00003", table.get("k00003")) >= 1
    assert check_table_value(b"k00003", table[b"k00003"]) >= 1
    with pytest.raises(TypeError):
        table.get(3)
    with pytest.raises(TypeError):
        table.get_many([b"k00001", None])
    with pytest.raises(KeyError):
        table["nobody"]
    table.close()
    assert table.closed
    with pytest.raises(ValueError):
        table.get(b"k00001")
    table.close()


def test_wait_for_a_table_not_created_yet(shm_dir, start_writer):
    path = shm_dir / "later.table"
    with pytest.raises(podcache.FileNotFound):
        podcache.Table(path)
    start_writer("table", str(path), "10")
    # Retries missing and not-ready until the writer has created it.
    with podcache.Table(path, wait=60) as table:
        assert table.writer_epoch == 1


def test_missing_file(shm_dir):
    path = shm_dir / "missing.table"
    with pytest.raises(podcache.FileNotFound) as e:
        podcache.Table(path)
    assert isinstance(e.value, FileNotFoundError)
    assert isinstance(e.value, podcache.Error)
    assert e.value.errno == errno.ENOENT
    assert e.value.path == str(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"PODCREAT", b"PODCREAT" + bytes(4096)],
    ids=["empty", "creating-magic-only", "creating-magic"],
)
def test_not_ready_file(shm_dir, content):
    path = shm_dir / "creating.table"
    path.write_bytes(content)
    with pytest.raises(podcache.NotReady) as e:
        podcache.Table(path)
    assert e.value.path == str(path)
    # Waiting a bounded time for it still fails with NotReady.
    with pytest.raises(podcache.NotReady):
        podcache.Table(path, wait=0.05)


@pytest.mark.parametrize(
    "content",
    [b"hello, not a podcache file\n" * 100, bytes(range(256)) * 16],
    ids=["text", "binary"],
)
def test_foreign_file(shm_dir, content):
    path = shm_dir / "foreign.table"
    path.write_bytes(content)
    with pytest.raises(podcache.Foreign) as e:
        podcache.Table(path)
    assert isinstance(e.value, podcache.Corrupt)
    assert path.read_bytes() == content, "a reader must never change the file"


def test_directory_is_foreign(shm_dir):
    with pytest.raises(podcache.Foreign):
        podcache.Table(shm_dir)


def finished_table(shm_dir, start_writer, keys=20):
    """A table written by pywriter, which is then stopped: a copy of it is stable."""
    path = shm_dir / "done.table"
    w = start_table(start_writer, path, keys=keys)
    w.close()
    return path


def patched_copy(src, dst, offset, data):
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return dst


def test_version_mismatch(shm_dir, start_writer):
    src = finished_table(shm_dir, start_writer)
    (version,) = struct.unpack("<I", src.read_bytes()[8:12])
    path = patched_copy(src, shm_dir / "v99.table", 8, struct.pack("<I", 99))
    with pytest.raises(podcache.VersionMismatch) as e:
        podcache.Table(path)
    assert (e.value.found, e.value.expected) == (99, version)


def test_corrupt_header(shm_dir, start_writer):
    src = finished_table(shm_dir, start_writer)
    # A layout parameter word (0x40..0x80) changed: the header checksum no longer matches.
    path = patched_copy(src, shm_dir / "bad-header.table", 0x48, b"\xff\xff\xff\xff")
    with pytest.raises(podcache.Corrupt) as e:
        podcache.Table(path)
    assert not isinstance(e.value, podcache.Foreign)


def test_truncated_file(shm_dir, start_writer):
    src = finished_table(shm_dir, start_writer)
    path = shm_dir / "short.table"
    shutil.copyfile(src, path)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(podcache.Corrupt):
        podcache.Table(path)


def test_table_opened_as_ring(shm_dir, start_writer):
    src = finished_table(shm_dir, start_writer)
    with pytest.raises(podcache.WrongKind):
        podcache.Subscriber(src)


def test_corrupt_value_is_detected_not_served(shm_dir, start_writer):
    src = finished_table(shm_dir, start_writer)
    data = bytearray(src.read_bytes())
    key = b"k00007"
    # Flip the first byte of the version (inside the value, under the record checksum) in every
    # record of the key, so whichever is live is damaged.
    at = data.find(key + b"|", 256)
    assert at > 0
    while at > 0:
        data[at + len(key) + 1] ^= 0x5A
        at = data.find(key + b"|", at + 1)
    path = shm_dir / "bad-value.table"
    path.write_bytes(bytes(data))
    with podcache.Table(path) as table:
        assert check_table_value(b"k00006", table.get(b"k00006")) >= 1
        with pytest.raises(podcache.Corrupt):
            table.get(key)
        with pytest.raises(podcache.Corrupt):
            table.get_many([b"k00006", key])
