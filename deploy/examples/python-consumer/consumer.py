"""A Python app container reading the sidecar's table through a read-only mount.

Reads KEY from DIR/TABLE.table with the ``podcache`` package (crates/python) every INTERVAL
seconds and prints its value; re-opens the table when the sidecar replaced the file (a layout
change, or a restart after the file was deleted). ``--once`` prints the value and exits 0, or
exits 1 if the key is absent (used by .ci/pod-emulation).

    python consumer.py --dir /run/podcache --table main --key index.html
"""

import argparse
import signal
import sys
import time

import podcache


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="/run/podcache")
    p.add_argument("--table", default="main")
    p.add_argument("--key", default="index.html")
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the table at start")
    p.add_argument("--once", action="store_true")
    a = p.parse_args()
    # As a container's PID 1, Python has no default action for SIGTERM: end on it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    table = podcache.Table(f"{a.dir}/{a.table}.table", wait=a.wait)
    while True:
        if table.file_replaced() or table.is_retired():
            table.reopen(wait=a.wait)
        value = table.get(a.key)
        if a.once:
            if value is None:
                print(f"{a.key}: absent", file=sys.stderr)
                return 1
            sys.stdout.write(value.decode("utf-8", "replace") + "\n")
            return 0
        print(f"{a.key}: {len(value)} bytes" if value is not None else f"{a.key}: absent", flush=True)
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
