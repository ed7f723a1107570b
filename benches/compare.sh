#!/usr/bin/env bash
# The peer comparison (issue 5) in one command, on a fresh Debian machine:
#
#     bash benches/compare.sh [--reps N] [--batch-ms N]
#
# Installs what it needs if missing (redis-server, libclang-dev for iceoryx2; apt-get as root or
# through sudo), builds the `compare` binary with the iceoryx2 peer in Cargo's default release
# profile (as a user's app builds the podcache crates), runs every workload against
# podcache and its peers N times (default 7, repetitions interleaved), and writes
# benches/RESULTS.md, benches/charts/*.svg and the README's benchmarks section. About 10 minutes
# on a 2-vCPU machine, most of it building.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 \
    || ! dpkg -s libclang-dev >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
if ((${#need[@]})); then
    echo "compare.sh: installing ${need[*]}"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi
# redis-server's Debian package starts a system service on port 6379; the bench starts its own
# server on a Unix socket and does not use it.

# Cargo's default release profile, not this workspace's tuned one (codegen-units = 1, thin LTO):
# the figures are what an app that depends on the podcache crates gets from its own build.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export PODCACHE_BENCH_BUILD="Cargo's default release profile (lto = false, codegen-units = 16), as an app that depends on the podcache crates builds them"

start=$(date +%s)
cargo build --release -p podcache-benches --features iceoryx2 --bin compare
cargo run --release -q -p podcache-benches --features iceoryx2 --bin compare -- "$@"
echo "compare.sh: done in $(($(date +%s) - start)) s (build included)"
