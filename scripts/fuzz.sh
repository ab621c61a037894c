#!/usr/bin/env bash
# Fuzzes every decoder: builds the cargo-fuzz targets of fuzz/ (the framework's codecs,
# the gateway's WebSocket codec and client message parser), then runs each for SECONDS,
# one at a time, and prints per target the executions, the seconds and the crashes.
# Exits non-zero if any target crashed (its input is in fuzz/artifacts/TARGET/). Not part
# of CI: run it by hand, e.g. after changing a codec.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 60 seconds, every target)
#
# Works on the stable toolchain: `--sanitizer none` (the crates fuzzed forbid unsafe
# code, so AddressSanitizer finds little, at a third of the speed; FUZZ_SANITIZER=address
# builds with it anyway, through RUSTC_BOOTSTRAP=1 for -Zsanitizer), `-a` (debug
# assertions, so that arithmetic overflow panics). Environment: FUZZ_MAX_LEN (default
# 4096), FUZZ_ARGS (more libFuzzer flags). Corpora grow in fuzz/corpus/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
max_len="${FUZZ_MAX_LEN:-4096}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "-- installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd fuzz
sanitizer="${FUZZ_SANITIZER:-none}"
if [ "$sanitizer" != none ]; then export RUSTC_BOOTSTRAP=1; fi
flags=(--sanitizer "$sanitizer" -a)
echo "-- building the fuzz targets"
cargo fuzz build "${flags[@]}"
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
rows=()
failed=()
for target in "${targets[@]}"; do
    echo "-- fuzzing $target for ${seconds}s"
    mkdir -p "corpus/$target" "artifacts/$target"
    before="$(find "artifacts/$target" -type f | wc -l)"
    start="$(date +%s.%N)"
    status=0
    # The binary itself (as `cargo fuzz run` would start it, without a rebuild check).
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    "$bin/$target" -artifact_prefix="artifacts/$target/" \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 ${FUZZ_ARGS:-} "corpus/$target" >"$logs/$target.log" 2>&1 || status=$?
    end="$(date +%s.%N)"
    after="$(find "artifacts/$target" -type f | wc -l)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log" | tail -1)"
    took="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
    rate="$(awk -v n="${runs:-0}" -v s="$took" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')"
    crashes=$((after - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
    rows+=("$(printf '%-22s %12s %8s %10s %8s' "$target" "${runs:-?}" "$took" "$rate" "$crashes")")
    if [ "$crashes" -ne 0 ]; then
        failed+=("$target")
        echo "!! $target crashed (exit $status); the end of its log:"
        tail -n 40 "$logs/$target.log"
        find "artifacts/$target" -type f -newermt "@${start%.*}" -printf '   input: fuzz/%p\n'
    fi
done

echo
printf '%-22s %12s %8s %10s %8s\n' target executions seconds "exec/s" crashes
printf '%s\n' "${rows[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "crashed: ${failed[*]} (reproduce: cd fuzz && cargo fuzz run ${flags[*]} TARGET INPUT)"
    exit 1
fi
