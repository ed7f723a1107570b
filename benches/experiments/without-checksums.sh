#!/usr/bin/env bash
# What the per-record crc32 costs, measured: the peer comparison's checksum-bound workloads
# (64 B stream, 100,000- and 1,000-key gets) run on this commit and on this commit with the
# payload crc switched off (no-payload-crc.patch beside this script), alternately, in one session.
# With --crc32c the other side computes CRC-32C (Castagnoli, the SSE4.2 `crc32` instruction, through
# the `crc32c` crate; crc32c.patch) instead of crc32fast's CRC-32: what another checksum would cost.
# Each run's progress goes to target/experiments/*.log.
#
#     bash benches/experiments/without-checksums.sh [--crc32c] [--reps N]
#
# This is not a configuration of podcache: rule 9 of the brief makes the crc (crc32fast) mandatory
# on every record. The patches exist only to measure what the rule costs (issues 2 and 3). Both builds are of
# HEAD; uncommitted changes are not measured. Each `compare` run takes its ratios within its own
# repetitions, as the comparison always does. About 6 minutes on a 2-vCPU machine, build included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
other=nocrc patch=no-payload-crc.patch
if [[ ${1:-} == --crc32c ]]; then
    other=crc32c patch=crc32c.patch
    shift
fi
reps=(--reps 7)
[[ $# -gt 0 ]] && reps=("$@")
work=$(mktemp -d)
cleanup() {
    git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true
    git -C "$root" worktree remove --force "$work/$other" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$root/target/experiments"
git worktree add --detach -q "$work/base" HEAD
git worktree add --detach -q "$work/$other" HEAD
git -C "$work/$other" apply "$root/benches/experiments/$patch"
for side in base "$other"; do
    CARGO_TARGET_DIR="$root/target/experiments/$side" \
        cargo build --release -q --manifest-path "$work/$side/Cargo.toml" -p podcache-benches --bin compare
done
for workload in stream/64B get/100000_uniform get/1000_uniform; do
    for side in base "$other"; do
        log="$root/target/experiments/$side-${workload//\//-}.log"
        "$root/target/experiments/$side/release/compare" "${reps[@]}" --only "$workload" --no-write 2>"$log" \
            | grep -E '^\| (2|3) \|.*\*\*(met|missed)\*\*' | grep -v 'memory:' >"$log.targets" || true
        # The host's state during the run: the cache-line round trip between the two vCPUs
        # (70-90 ns when they are close; several times that when the host has spread them out).
        trips=$(grep -o 'cache-line round trip [0-9]* ns' "$log" | awk '{print $4}' | sort -n | paste -sd' ')
        echo "== $workload, $side (cache-line round trips, ns: $trips)"
        cat "$log.targets"
    done
done
