#!/usr/bin/env bash
# Short soaks for CI: the echo example and the gateway (embedded defaults) each get a
# mixed load for a few seconds, then tethernet-soak checks they came back to baseline.
# Fails when a verdict fails. Loopback only; every process started here is stopped.
#
# Usage: scripts/soak_ci.sh [TARGET_DIR]   (default target/debug; binaries built first)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug}"
seconds="${SOAK_SECONDS:-8}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "nothing listening on 127.0.0.1:$1" >&2
    return 1
}

echo "-- soak: echo example, mixed, ${seconds}s"
"$bin/examples/echo" --listen 127.0.0.1:17931 --admin 127.0.0.1:19931 --threads 2 >"$work/echo.log" 2>&1 &
pids+=($!)
wait_port 19931
"$bin/tethernet-soak" --target 127.0.0.1:17931 --admin 127.0.0.1:19931 --protocol echo \
    --scenario mixed --clients 40 --duration "$seconds" --settle 30 --report "$work/echo-report"

echo "-- soak: gateway (SQLite, in-process bus), mixed, ${seconds}s"
secret="soak-ci-secret-$(date +%s%N)"
"$bin/tethernet-gateway" --tcp 127.0.0.1:17932 --ws 127.0.0.1:17933 --admin 127.0.0.1:19932 \
    --data-dir "$work/gateway-data" --secret "$secret" >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_port 19932
"$bin/tethernet-soak" --target 127.0.0.1:17932 --admin 127.0.0.1:19932 --protocol gateway \
    --secret "$secret" --scenario mixed --clients 40 --duration "$seconds" --settle 30 --report "$work/gateway-report"
