"""podcache.Subscriber against a ring a Rust writer process (pywriter) publishes to."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import podcache
from conftest import check_ring_message


def start_ring(start_writer, path, capacity):
    w = start_writer("ring", str(path), str(capacity))
    w.wait_line(lambda line: line == "ready")
    return w


def published(w, last):
    w.wait_line(lambda line: line == f"published {last}")


def test_reads_never_torn_while_the_writer_publishes(shm_dir, start_writer):
    path = shm_dir / "r.ring"
    w = start_ring(start_writer, path, 1 << 16)
    total = 20_000
    sub = podcache.Subscriber(path, "oldest")
    # Published in bursts of 64 with 50 us pauses, while we read.
    w.send(f"publish {total} 50")
    prev, prev_lost, received = 0, 0, 0
    while prev < total:
        msg = sub.recv(timeout=None)
        assert msg is not None
        counter = check_ring_message(msg)
        lost = sub.lost
        # Every message is the next one, or the next after the ones we were told we lost.
        assert counter == prev + 1 + (lost - prev_lost), (counter, prev, lost, prev_lost)
        assert sub.last_seq == counter
        assert sub.last_lost == lost - prev_lost
        prev, prev_lost = counter, lost
        received += 1
    assert received + sub.lost == total
    published(w, total)
    assert sub.try_recv() is None


def test_lapped_subscriber_is_told_how_many_it_lost(shm_dir, start_writer):
    path = shm_dir / "small.ring"
    w = start_ring(start_writer, path, 4096)
    total = 1000
    sub = podcache.Subscriber(path)
    w.send("publish 1")
    published(w, 1)
    assert check_ring_message(sub.recv(timeout=None)) == 1
    assert sub.lost == 0 and sub.laps == 0
    w.send(f"publish {total - 1}")
    published(w, total)
    # About 130 bytes a message: the ring holds a few dozen of the 1,000. We read none of them
    # while they were published.
    assert sub.backlog_bytes > 4096
    msgs = []
    while (m := sub.try_recv()) is not None:
        msgs.append(check_ring_message(m))
    first = msgs[0]
    assert sub.laps >= 1
    assert sub.lost == first - 2 > 0, "told exactly the messages between 1 and the oldest it got"
    assert msgs == list(range(first, total + 1))
    assert 1 + len(msgs) + sub.lost == total


def test_lapped_before_the_first_message_is_told_too(shm_dir, start_writer):
    path = shm_dir / "small.ring"
    w = start_ring(start_writer, path, 4096)
    sub = podcache.Subscriber(path)
    w.send("publish 1000")
    published(w, 1000)
    first = check_ring_message(sub.try_recv())
    assert sub.laps >= 1
    assert sub.lost == first - 1


def test_start_newest_and_iteration(shm_dir, start_writer):
    path = shm_dir / "r.ring"
    w = start_ring(start_writer, path, 1 << 16)
    w.send("publish 10")
    published(w, 10)
    with podcache.Subscriber(path, start="newest") as sub:
        assert sub.try_recv() is None
        w.send("publish 5")
        got = []
        for msg in sub:
            got.append(check_ring_message(msg))
            if len(got) == 5:
                break
        assert got == [11, 12, 13, 14, 15]
        assert sub.recv(timeout=0) is None
        assert sub.recv(timeout=0.01) is None
    assert sub.closed
    with pytest.raises(ValueError):
        sub.try_recv()
    with pytest.raises(ValueError):
        podcache.Subscriber(path, start="middle")
    with pytest.raises(ValueError):
        podcache.Subscriber(path).recv(timeout=-1)


def test_blocking_recv_releases_the_gil(shm_dir, start_writer):
    path = shm_dir / "r.ring"
    w = start_ring(start_writer, path, 1 << 16)
    sub = podcache.Subscriber(path)
    entering = threading.Event()
    result = []

    def consumer():
        entering.set()
        result.append(sub.recv())  # no timeout: until a message comes

    t = threading.Thread(target=consumer)
    t.start()
    entering.wait()
    # This thread counts in pure Python while the consumer is blocked in recv. If recv held
    # the GIL, this loop could not run at all (the watchdog would end the test).
    progress = 0
    while progress < 2_000_000:
        progress += 1
    assert t.is_alive() and not result, "recv returned without a message"
    # The subscriber is busy in that thread: another thread's use is refused, not blocked.
    with pytest.raises(RuntimeError):
        sub.try_recv()
    w.send("publish 1")
    t.join()
    assert check_ring_message(result[0]) == 1
    assert progress == 2_000_000


@pytest.mark.skip(
    reason="quarantined: in full .ci/python runs recv raised no KeyboardInterrupt even for repeated "
    "SIGINTs (it does standalone); cause not found"
)
def test_blocking_recv_is_interrupted_by_ctrl_c(shm_dir, start_writer):
    path = shm_dir / "r.ring"
    start_ring(start_writer, path, 1 << 16)
    sub = podcache.Subscriber(path)
    started = threading.Event()

    def interrupt():
        started.wait()
        time.sleep(0.2)  # let recv reach its wait: the case under test is a recv that waits
        os.kill(os.getpid(), signal.SIGINT)

    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a
    # shell ignores SIGINT for the commands it runs in the background (`.ci/run &`): the test
    # installs the handler itself, so it tests recv, not how the suite was launched.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = threading.Thread(target=interrupt)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            started.set()
            sub.recv()
    finally:
        t.join()
        signal.signal(signal.SIGINT, previous)
    # Still usable after the interruption.
    assert sub.try_recv() is None


def test_ring_errors(shm_dir):
    with pytest.raises(podcache.FileNotFound):
        podcache.Subscriber(shm_dir / "missing.ring")
    p = shm_dir / "creating.ring"
    p.write_bytes(b"PODCREAT" + bytes(1024))
    with pytest.raises(podcache.NotReady):
        podcache.Subscriber(p)
    p = shm_dir / "foreign.ring"
    p.write_bytes(b"\x7fELF" + bytes(1024))
    with pytest.raises(podcache.Foreign):
        podcache.Subscriber(p)


def test_ring_opened_as_table(shm_dir, start_writer):
    path = shm_dir / "r.ring"
    start_ring(start_writer, path, 1 << 16)
    with pytest.raises(podcache.WrongKind):
        podcache.Table(path)
