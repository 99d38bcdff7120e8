#!/bin/sh
# Re-records the recordings in this directory (see README.md). Needs root (eBPF uprobes).
# Run from anywhere: sh profiler-core/tests/data/regenerate.sh
# Then re-bless the goldens: MEMPROF_BLESS=1 cargo test -p profiler-core --test integration recorded
set -eu
root=$(cd "$(dirname "$0")/../../.." && pwd)
data="$root/profiler-core/tests/data"
cd "$root"
cargo build -p profiler-cli -j 2
mkdir -p target/samples
# The flags of the e2e tests (profiler-cli/tests/e2e/support.rs, Build::FramePointers).
for name in analyses leaks; do
    gcc -O2 -g -fno-builtin -pthread -fno-omit-frame-pointer \
        -o "target/samples/$name-fp" "samples/c/$name.c"
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
target/debug/memprof run -o "$out/mix" --ops 20 --recording "$data/analyses-mix.mprof" \
    -- target/samples/analyses-fp mix
target/debug/memprof run -o "$out/peak" --recording "$data/analyses-peak.mprof" \
    -- target/samples/analyses-fp peak
target/debug/memprof run -o "$out/leaks" --recording "$data/leaks.mprof" \
    -- target/samples/leaks-fp
# Attach: a cache that grows by 4096 bytes every 20 ms, watched for one second.
target/samples/analyses-fp cache >"$out/cache.stdout" &
cache=$!
until grep -q ready "$out/cache.stdout"; do sleep 0.05; done
target/debug/memprof attach "$cache" --duration 1 -o "$out/cache" \
    --recording "$data/analyses-cache-attach.mprof"
kill "$cache"
wait "$cache" || true
ls -l "$data"/*.mprof
