#!/usr/bin/env python3
"""Python gets: podcache.Table.get vs redis-py GET vs the sidecar's HTTP API vs dict.get.

All four in one run, on the same 100,000 keys (16-byte keys, 100-byte values, as the Rust
benches): the sidecar (`podcache serve`, on a temporary directory on tmpfs) owns a table and
is filled through its HTTP load API; podcache.Table maps that same file read-only; Redis runs on
loopback with persistence off; the dict holds the same pairs. Each figure is the median over
repetitions of the time per get in a plain `for key in keys: get(key)` loop (the loop's own
cost is in every figure alike); ratios are taken within each repetition, then their median.
It reports, it asserts nothing.

    python3 benches/python/bench_get.py --sidecar target/release/podcache [--redis-port P]
        [--quick] [--results benches/python/RESULTS.md]

Without --redis-port it starts its own redis-server (if on PATH) on a free loopback port.
--results replaces the "## Python reader" section at the end of that file with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import podcache

SECTION = "## Python reader"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench_get: {what} did not come up within {timeout:.0f} s")


def make_pairs(n: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(7)
    pairs = []
    for i in range(n):
        key = b"key:%012d" % i  # 16 bytes
        value = bytes(rng.getrandbits(8) for _ in range(100))
        pairs.append((key, value))
    return pairs


class Sidecar:
    """`podcache serve` on a temporary tmpfs directory, one table filled via the HTTP API."""

    def __init__(self, exe: str, pairs) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="podcache-bench-", dir=base)
        self.port, ops = free_port(), free_port()
        n = len(pairs)
        self.proc = subprocess.Popen(
            [exe, "serve", "--dir", self.dir, "--table", f"bench={n}:64MiB",
             "--listen", f"127.0.0.1:{self.port}", "--ops-listen", f"127.0.0.1:{ops}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def ready():
            c = http.client.HTTPConnection("127.0.0.1", ops, timeout=2)
            c.request("GET", "/readyz")
            return c.getresponse().status == 200

        wait_until("podcache serve", ready)
        import base64

        # In chunks: a request body is at most --max-body (16 MiB by default).
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        for at in range(0, n, 20_000):
            body = "".join(
                json.dumps({"key": k.decode(), "value_base64": base64.b64encode(v).decode()}) + "\n"
                for k, v in pairs[at : at + 20_000]
            ).encode()
            c.request("POST", "/v1/tables/bench/load", body=body)
            r = c.getresponse()
            answer = r.read()
            if r.status != 200:
                raise SystemExit(f"bench_get: load failed: {r.status} {answer[:200]!r}")
        self.table_path = os.path.join(self.dir, "bench.table")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    def __init__(self, port: int | None) -> None:
        self.proc = None
        if port is None:
            exe = shutil.which("redis-server")
            if exe is None:
                raise FileNotFoundError("redis-server not on PATH")
            port = free_port()
            self.proc = subprocess.Popen(
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)
        wait_until("redis-server", self.client.ping)

    def close(self) -> None:
        self.client.close()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


def per_get_ns(get, keys) -> float:
    t0 = time.perf_counter_ns()
    for k in keys:
        get(k)
    return (time.perf_counter_ns() - t0) / len(keys)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sidecar", help="the podcache binary (target/release/podcache)")
    ap.add_argument("--redis-port", type=int, help="a running redis-server on 127.0.0.1")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="4 repetitions, fewer socket gets (CI)")
    ap.add_argument("--results", help="write the figures into this Markdown file's Python section")
    args = ap.parse_args()

    reps = 4 if args.quick else 8
    socket_sample = 2_000 if args.quick else 10_000
    started = time.monotonic()
    pairs = make_pairs(args.keys)
    keys = [k for k, _ in pairs]
    rng = random.Random(11)

    sidecar = redis = None
    notes = []
    try:
        if args.sidecar and os.path.exists(args.sidecar):
            sidecar = Sidecar(args.sidecar, pairs)
        else:
            notes.append("sidecar HTTP API: skipped (no --sidecar binary)")
        try:
            redis = Redis(args.redis_port)
            redis.client.flushall()
            pipe = redis.client.pipeline(transaction=False)
            for i, (k, v) in enumerate(pairs):
                pipe.set(k, v)
                if i % 5000 == 4999:
                    pipe.execute()
            pipe.execute()
        except (FileNotFoundError, ImportError) as e:
            notes.append(f"redis-py GET: skipped ({e})")
            redis = None

        if sidecar is not None:
            table = podcache.Table(sidecar.table_path)
        else:
            # No sidecar: the same pairs in a table written by nobody else is not possible from
            # Python (no writer here); measure what can be measured.
            table = None
            notes.append("Table.get: skipped (the table comes from the sidecar)")
        d = dict(pairs)

        # Warm up (page in the table, fill the dict's and the interpreter's caches), then check
        # that every contender answers what the others do.
        for k in keys:
            d.get(k)
            if table is not None:
                table.get(k)
        # Check once that every contender answers what the others do.
        for k, v in rng.sample(pairs, 100):
            assert d.get(k) == v
            if table is not None:
                assert table.get(k) == v and table.get(k.decode()) == v
            if redis is not None:
                assert redis.client.get(k) == v
        http_conn = None
        if sidecar is not None:
            http_conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)

        def http_get(k: bytes, conn=http_conn) -> bytes:
            conn.request("GET", "/v1/tables/bench/keys/" + k.decode())
            return conn.getresponse().read()

        if http_conn is not None:
            assert http_get(pairs[5][0]) == pairs[5][1]

        results: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        for rep in range(reps):
            shuffled = keys[:]
            rng.shuffle(shuffled)
            # New key objects, laid out in the order they are used (as the str keys below), with
            # their hash computed, so no contender pays for scattered or unhashed key objects.
            order = [bytes(bytearray(k)) for k in shuffled]
            for k in order:
                hash(k)
            sample = order[:socket_sample]
            str_order = [k.decode() for k in order]
            runs = [("dict.get", lambda: per_get_ns(d.get, order))]
            if table is not None:

                def many(order=order):
                    t0 = time.perf_counter_ns()
                    for i in range(0, len(order), 100):
                        table.get_many(order[i : i + 100])
                    return (time.perf_counter_ns() - t0) / len(order)

                runs += [
                    ("Table.get (bytes keys)", lambda: per_get_ns(table.get, order)),
                    ("Table.get (str keys)", lambda: per_get_ns(table.get, str_order)),
                    ("Table.get_many (100 a call)", many),
                ]
            if redis is not None:
                runs.append(("redis-py GET (loopback TCP)", lambda: per_get_ns(redis.client.get, sample)))
            if http_conn is not None:
                runs.append(("sidecar HTTP GET (http.client, keep-alive)", lambda: per_get_ns(http_get, sample)))
            # The contenders run back to back in an order that rotates between repetitions.
            k = rep % len(runs)
            fig = {name: run() for name, run in runs[k:] + runs[:k]}
            for name, ns in fig.items():
                results.setdefault(name, []).append(ns)
            if table is not None:
                t = fig["Table.get (bytes keys)"]
                ratios.setdefault("Table.get / dict.get (time; target <= 5x)", []).append(t / fig["dict.get"])
                if redis is not None:
                    ratios.setdefault("redis-py GET / Table.get (time; target >= 20x)", []).append(
                        fig["redis-py GET (loopback TCP)"] / t
                    )
                if http_conn is not None:
                    ratios.setdefault("sidecar HTTP GET / Table.get (time)", []).append(
                        fig["sidecar HTTP GET (http.client, keep-alive)"] / t
                    )
        took = time.monotonic() - started
    finally:
        if sidecar is not None:
            sidecar.close()
        if redis is not None:
            redis.close()

    lines = []
    lines.append(
        f"- **Machine:** {platform.machine()}, {os.cpu_count()} vCPUs, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; load average before the run "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}. A shared machine (other engineers build and "
        "test on it): figures are noisy."
    )
    lines.append(
        f"- **Run:** `benches/python/bench_get.py{' --quick' if args.quick else ''}`, {args.keys:,} keys "
        f"(16 B keys, 100 B values), {reps} repetitions; table and dict: every key per repetition in a "
        f"shuffled order; Redis and HTTP: {socket_sample:,} of them per repetition. {took:.0f} s in all."
    )
    lines.append("")
    lines.append("| get | ns per get (median) | range |")
    lines.append("|---|---:|---:|")
    for name, xs in results.items():
        lines.append(f"| {name} | {statistics.median(xs):,.0f} | {min(xs):,.0f}–{max(xs):,.0f} |")
    lines.append("")
    if ratios:
        lines.append("| ratio (within each repetition) | median | range |")
        lines.append("|---|---:|---:|")
        for name, xs in ratios.items():
            lines.append(f"| {name} | {statistics.median(xs):.2f}× | {min(xs):.2f}–{max(xs):.2f}× |")
        lines.append("")
    for n in notes:
        lines.append(f"- {n}")
    text = "\n".join(lines).rstrip() + "\n"
    print(text)

    if args.results:
        p = Path(args.results)
        old = p.read_text() if p.exists() else ""
        head = old.split("\n" + SECTION + "\n")[0].rstrip("\n")
        intro = (
            f"{SECTION}\n\nWritten by `benches/python/bench_get.py --results benches/python/RESULTS.md` (from the venv "
            "of `.ci/python`), not by `compare.sh`: Python gets through the `podcache` package "
            "(crates/python) next to redis-py, the sidecar's HTTP API and a dict, in one run.\n\n"
        )
        p.write_text(head + "\n\n" + intro + text)
        print(f"bench_get: wrote the {SECTION!r} section of {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
