#!/usr/bin/env python3
"""Summarise the criterion results of the podcache benches as Markdown tables.

Reads <target>/criterion/**/new/{benchmark,estimates}.json (medians of the per-sample
time per iteration) and, optionally, saved bench logs for the `hist ...` and `pair ...` lines.

    python3 benches/report.py [--target target] [--log bench.log ...]

With several runs (copies of target/criterion, e.g. one per repetition on a noisy machine):

    python3 benches/report.py --runs run1/criterion run2/criterion ... --log run1.log run2.log ...

every figure is the median over the runs of the per-run criterion median (or histogram p50),
with the range over runs where there is more than one.
"""

import argparse
import json
import os
import re
import sys

SIZES = [("64B", 64), ("1KiB", 1024), ("64KiB", 65536)]
STREAMS = ["podcache_spin", "podcache_poll", "podcache_adaptive", "uds", "uds_flush", "rtrb"]


def load(root):
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        out[bench["full_id"]] = {
            "median_ns": est["median"]["point_estimate"],
            "lo_ns": est["median"]["confidence_interval"]["lower_bound"],
            "hi_ns": est["median"]["confidence_interval"]["upper_bound"],
            "throughput": bench.get("throughput"),
        }
    return out


def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def merge(runs):
    """Per bench: median over runs of the per-run median, and the per-run values in run order."""
    out = {}
    for key in set().union(*runs):
        ests = [r[key] for r in runs if key in r]
        vals = [e["median_ns"] for e in ests]
        if len(ests) == 1:  # one run: keep criterion's confidence interval of the median
            out[key] = dict(ests[0], vals=vals)
        else:
            out[key] = {"median_ns": median(vals), "lo_ns": min(vals), "hi_ns": max(vals), "vals": vals}
    return out


def hist_lines(logs):
    hist = {}
    pairs = []
    pair_pat = re.compile(r"^pair (\S+): blocks=(\d+) x (\d+) median_ratio=([\d.]+) min_ratio=([\d.]+) "
                          r"max_ratio=([\d.]+) podcache_p50_median=(\d+) ns cacheline_p50_median=(\d+) ns")
    pat = re.compile(r"^hist (\S+): n=(\d+) p50=(\d+) ns p90=(\d+) ns p99=(\d+) ns p99\.9=(\d+) ns max=(\d+) ns"
                     r" \(one clock read in each ≈ (\d+) ns\)")
    for log in logs or []:
        with open(log, errors="replace") as f:
            for line in f:
                m = pat.match(line.strip())
                if m:
                    h = dict(zip(["n", "p50", "p90", "p99", "p999", "max", "clock"], map(int, m.groups()[1:])))
                    hist.setdefault(m.group(1), []).append(h)
                m = pair_pat.match(line.strip())
                if m:
                    g = m.groups()
                    pairs.append({"ratio": float(g[3]), "min": float(g[4]), "max": float(g[5]),
                                  "pod": int(g[6]), "line": int(g[7]), "blocks": int(g[1]), "block": int(g[2])})
    # Several runs: median of each percentile over the runs, and the range of p50.
    merged = {}
    for name, hs in hist.items():
        m = {k: median([h[k] for h in hs]) for k in hs[0]}
        m["p50_lo"], m["p50_hi"], m["runs"] = min(h["p50"] for h in hs), max(h["p50"] for h in hs), len(hs)
        merged[name] = m
    return merged, pairs


def fmt_rate(x):
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.0f} "


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default=os.environ.get("CARGO_TARGET_DIR", "target"))
    ap.add_argument("--runs", nargs="+", help="criterion directories of several runs")
    ap.add_argument("--log", nargs="+")
    args = ap.parse_args()
    roots = args.runs or [os.path.join(args.target, "criterion")]
    r = merge([load(root) for root in roots])
    hist, pairs = hist_lines(args.log)
    if not r:
        sys.exit(f"no criterion results under {roots}")
    nruns = len(roots)
    if nruns > 1:
        print(f"Figures: median over {nruns} runs of each run's criterion median; (each run's value, in run "
              "order).\n")

    def per_run(key, conv):
        """` (v1 / v2 / …)`: each run's value, in run order, when there are several runs."""
        e = r.get(key)
        if not e or len(e.get("vals", [])) < 2:
            return ""
        return " (" + " / ".join(conv(v) for v in e["vals"]) + ")"

    def get(key):
        return r.get(key, {}).get("median_ns")

    print("### Streaming throughput (`ring_throughput`), medians\n")
    many = nruns > 1
    print("| size | system | msgs/s | MB/s |" + (" msgs/s of each run |" if many else ""))
    print("|---|---|---:|---:|" + ("---|" if many else ""))
    for label, size in SIZES:
        for s in STREAMS:
            key = f"ring_throughput/{s}/{label}"
            ns = get(key)
            if ns is None:
                continue
            rate = 1e9 / ns
            runs = per_run(key, lambda x: fmt_rate(1e9 / x).strip())[2:-1] if many else None
            print(f"| {label} | {s} | {fmt_rate(rate)} | {rate * size / 1e6:,.0f} |" + (f" {runs} |" if many else ""))
    print("\n### memcpy (`copy_from_slice`, one thread), medians\n")
    print("| buffer | time | GB/s |")
    print("|---|---:|---:|")
    memcpy = {}
    for label, size in (("64KiB", 64 << 10), ("4MiB", 4 << 20), ("64MiB", 64 << 20)):
        ns = get(f"memcpy/copy_from_slice/{label}")
        if ns is not None:
            memcpy[label] = size / ns  # GB/s (bytes per ns)
            key = f"memcpy/copy_from_slice/{label}"
            print(f"| {label} | {fmt_ns(ns)} | {memcpy[label]:.1f}{per_run(key, lambda x: f'{size / x:.1f}')} |")

    print("\n### Round trip, 64 B (`ring_roundtrip`)\n")
    ci = "range over runs" if nruns > 1 else "95% CI of the median"
    print(f"| mode | criterion median (per round trip) | {ci} | hist p50 | p50 range | p90 | p99 | p99.9 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rts = ["podcache_spin", "podcache_poll", "podcache_adaptive", "podcache_always", "cacheline", "uds"]
    for m in rts:
        e = r.get(f"ring_roundtrip/{m}/64B")
        if e is None:
            continue
        h = hist.get(f"ring_roundtrip/{m}/64B")
        hcells = ([f"{h['p50']:.0f} ns", f"{h['p50_lo']}–{h['p50_hi']} ns"]
                  + [f"{h[k]:.0f} ns" for k in ("p90", "p99", "p999")]) if h else ["–"] * 5
        print(f"| {m} | {fmt_ns(e['median_ns'])} | {fmt_ns(e['lo_ns'])} – {fmt_ns(e['hi_ns'])} | " + " | ".join(hcells) + " |")
    if hist:
        clock = next(iter(hist.values()))["clock"]
        print(f"\n(hist: each round trip timed alone; includes one clock read ≈ {clock:.0f} ns.)")
    if pairs:
        print("\nPaired podcache_spin / cache-line blocks (same child, alternating blocks):\n")
        print("| run | blocks | podcache p50 (median of blocks) | cache-line p50 | median ratio | min – max ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for i, p in enumerate(pairs, 1):
            print(f"| {i} | {p['blocks']} x {p['block']} | {p['pod']} ns | {p['line']} ns | {p['ratio']:.2f} | "
                  f"{p['min']:.2f} – {p['max']:.2f} |")

    ops = [k for k in sorted(r) if k.startswith("ring_ops/")]
    if ops:
        print("\n### Single-thread step costs (`ring_ops`), medians\n")
        print("| step | 64B | 1KiB | 64KiB |")
        print("|---|---:|---:|---:|")
        for step in ("publish_never", "publish_adaptive", "publish_always", "try_recv", "crc32"):
            cells = [get(f"ring_ops/{step}/{label}") for label, _ in SIZES]
            print(f"| {step} | " + " | ".join(fmt_ns(c) if c else "–" for c in cells) + " |")
        ns = get("ring_ops/instant_now")
        if ns:
            print(f"| instant_now | {fmt_ns(ns)} | | |")

    print("\n### Ratios versus targets\n")
    print("| ratio | measured | target | met |")
    print("|---|---:|---:|:---:|")

    def row(name, val, target, ge=True):
        if val is None:
            return
        ok = val >= target if ge else val < target
        print(f"| {name} | {val:.2f}x | {'≥' if ge else '<'} {target}x | {'yes' if ok else '**no**'} |")

    def ratio(a, b):
        x, y = get(a), get(b)
        return None if x is None or y is None else y / x  # rates are 1/ns

    for mode in ("podcache_spin", "podcache_poll", "podcache_adaptive"):
        row(f"64 B {mode} msgs/s ÷ UDS (64 KiB BufWriter)",
            ratio(f"ring_throughput/{mode}/64B", "ring_throughput/uds/64B"), 15.0)
        row(f"64 B {mode} msgs/s ÷ UDS flushed per message",
            ratio(f"ring_throughput/{mode}/64B", "ring_throughput/uds_flush/64B"), 15.0)
        row(f"64 B {mode} msgs/s ÷ rtrb", ratio(f"ring_throughput/{mode}/64B", "ring_throughput/rtrb/64B"), 0.5)
        ns = get(f"ring_throughput/{mode}/64KiB")
        for label in ("64KiB", "64MiB"):
            if ns and label in memcpy:
                row(f"64 KiB {mode} bytes/s ÷ memcpy {label}", 65536 / ns / memcpy[label], 0.25)
    spin, line = get("ring_roundtrip/podcache_spin/64B"), get("ring_roundtrip/cacheline/64B")
    if spin and line:
        row("round trip podcache_spin ÷ cache-line ping-pong (criterion medians)", spin / line, 4.0, ge=False)
    hs, hl = hist.get("ring_roundtrip/podcache_spin/64B"), hist.get("ring_roundtrip/cacheline/64B")
    if hs and hl:
        row("round trip podcache_spin p50 ÷ cache-line p50 (hist, separate benches)", hs["p50"] / hl["p50"], 4.0,
            ge=False)
    if pairs:
        row("round trip podcache_spin p50 ÷ cache-line p50 (paired blocks, median over runs)",
            median([p["ratio"] for p in pairs]), 4.0, ge=False)


if __name__ == "__main__":
    main()
