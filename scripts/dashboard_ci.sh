#!/usr/bin/env bash
# The dashboard, checked end to end: starts the misbehave example with its admin server,
# puts load on it (connections, leaked frames, blocked event loops, all on purpose),
# and runs scripts/dashboard_check.sh against it in headless Chromium.
#
# Usage: scripts/dashboard_ci.sh MISBEHAVE_BINARY [SCREENSHOT.png]
# Loopback only; stops the server it started, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

server_bin="${1:?usage: $0 MISBEHAVE_BINARY (target/debug/examples/misbehave) [SCREENSHOT.png]}"
screenshot="${2:-}"
port="${DASHBOARD_ECHO_PORT:-17907}"
admin_port="${DASHBOARD_ADMIN_PORT:-19907}"

TETHERNET_LEAK_DETECTION=paranoid "$server_bin" --listen "127.0.0.1:$port" \
    --admin "127.0.0.1:$admin_port" --leak-every 40 --block-every 400 --spawn-every 100 \
    >/tmp/tethernet-dashboard-echo.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $admin_port), 0.2)" 2>/dev/null; then
        break
    fi
    sleep 0.1
done

# Load: a few hundred frames over a few connections (bounded), some held open.
python3 scripts/echo_check.py "$port" 800
python3 scripts/echo_check.py "$port" 800
python3 - "$port" <<'PY' &
import socket, struct, sys, time
port = int(sys.argv[1])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
for s in held:
    s.sendall(struct.pack(">I", 1000) + b"x" * 100)  # half a frame: decoder bytes
time.sleep(8)
PY
holder=$!
sleep 1
DASHBOARD_EXPECT_UNOWNED=1 bash scripts/dashboard_check.sh "http://127.0.0.1:$admin_port" $screenshot
wait "$holder"
