#!/usr/bin/env bash
# End-to-end browser check of the tethernet-gateway chat page.
#
# Usage: scripts/chat_browser_check.sh [GATEWAY_BINARY]
#
# Starts GATEWAY_BINARY (default: target/debug/tethernet-gateway of this
# repository; build it with `cargo build -p tethernet-gateway`) on free
# loopback ports with a fresh temporary data directory and no admin server,
# mints login tokens for alice and bob (room lobby), and runs
# scripts/chat_browser_check.mjs: two headless-Chromium pages load the chat
# page from the gateway, log in, join "lobby", each sends a message, and each
# must show both messages. The gateway and the temporary directory are
# removed on exit.
#
# Needs node + npm and Debian's chromium. playwright-core is installed once
# into $PLAYWRIGHT_CACHE (default ${TMPDIR:-/tmp}/tethernet-playwright) and
# reused; chromium is installed with apt-get (through sudo when not root) if
# /usr/bin/chromium is missing.
#
# Environment: CHROMIUM (browser binary, default /usr/bin/chromium),
# PLAYWRIGHT_CACHE (see above), SCREENSHOT (write a screenshot of page B to
# this file), KEEP_LOGS=1 (print the gateway's log even on success).
#
# Exit codes: 0 ok, 1 check failed, 2 setup problem (binary, node, npm,
# chromium, gateway not starting).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$script_dir/.." && pwd)"
start_s=$SECONDS

say() { echo "[chat_browser_check] $*"; }
die() { echo "[chat_browser_check] error: $1" >&2; exit "${2:-2}"; }  # die MESSAGE [EXIT_CODE]

if [[ $# -gt 1 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    echo "usage: $0 [GATEWAY_BINARY]   (default: $repo_dir/target/debug/tethernet-gateway)" >&2
    exit 2
fi
gateway="${1:-$repo_dir/target/debug/tethernet-gateway}"
if [[ ! -x "$gateway" ]]; then
    die "gateway binary $gateway not found or not executable (build it with: cd $repo_dir && cargo build -p tethernet-gateway)"
fi
command -v node >/dev/null 2>&1 || die "node not found (Node.js 18+ is needed)"

# --- a private temp dir, and cleanup of everything we start ---------------
workdir="$(mktemp -d "${TMPDIR:-/tmp}/chat-browser-check.XXXXXX")"

# alive PID: the process runs (kill -0 alone also succeeds for a zombie, i.e. a
# child that exited but has not been waited for).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ -r "/proc/$1/stat" ]] || return 0
    [[ "$(sed -E 's/.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}
gateway_pid=""
stop_gateway() {
    if [[ -n "$gateway_pid" ]] && alive "$gateway_pid"; then
        kill -TERM "$gateway_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            alive "$gateway_pid" || break
            sleep 0.1
        done
        kill -KILL "$gateway_pid" 2>/dev/null || true
    fi
    if [[ -n "$gateway_pid" ]]; then wait "$gateway_pid" 2>/dev/null || true; fi
    gateway_pid=""
}
check_pid=""
cleanup() {
    local rc=$?
    if [[ -n "$check_pid" ]]; then
        # `timeout` passes the TERM on to node, which closes the browser.
        kill -TERM "$check_pid" 2>/dev/null || true
        wait "$check_pid" 2>/dev/null || true
    fi
    stop_gateway
    if [[ $rc -ne 0 || "${KEEP_LOGS:-}" == 1 ]] && [[ -s "$workdir/gateway.log" ]]; then
        echo "--- gateway log (last 40 lines):" >&2
        tail -n 40 "$workdir/gateway.log" >&2 || true
    fi
    rm -rf "$workdir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- chromium ---------------------------------------------------------------
chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
    [[ -n "${CHROMIUM:-}" ]] && die "CHROMIUM=$CHROMIUM is not executable"
    say "chromium missing: installing Debian's chromium with apt-get"
    sudo_cmd=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "chromium is missing and sudo is not available: run  apt-get install -y chromium  as root"
        sudo_cmd=(sudo -n)
    fi
    if ! "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >"$workdir/apt.log" 2>&1; then
        # A stale or empty package index is the usual reason; refresh it once.
        "${sudo_cmd[@]}" apt-get update -q >>"$workdir/apt.log" 2>&1 || true
        "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>"$workdir/apt.log" 2>&1 ||
            { tail -n 20 "$workdir/apt.log" >&2; die "apt-get install -y chromium failed"; }
    fi
    [[ -x "$chromium" ]] || die "chromium still not found at $chromium after installing it"
fi
export CHROMIUM="$chromium"

# --- playwright-core (cached; ES modules ignore NODE_PATH, but the .mjs falls
# back to require(), which honours it) ----------------------------------------
pw_cache="${PLAYWRIGHT_CACHE:-${TMPDIR:-/tmp}/tethernet-playwright}"
pw_ok() { NODE_PATH="$pw_cache/node_modules" node -e 'require("playwright-core")' >/dev/null 2>&1; }
if ! pw_ok; then
    command -v npm >/dev/null 2>&1 || die "npm not found; needed once to install playwright-core into $pw_cache"
    say "installing playwright-core into $pw_cache"
    mkdir -p "$pw_cache"
    [[ -f "$pw_cache/package.json" ]] || echo '{"name":"tethernet-playwright","private":true}' >"$pw_cache/package.json"
    (
        # Serialise concurrent first runs sharing the cache.
        if command -v flock >/dev/null 2>&1; then flock -w 120 9 || true; fi
        pw_ok && exit 0
        cd "$pw_cache" &&
            PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 120 npm install --no-audit --no-fund --silent playwright-core@1
    ) 9>"$pw_cache/.install.lock" || die "npm install playwright-core@1 into $pw_cache failed"
    pw_ok || die "playwright-core still cannot be loaded from $pw_cache/node_modules"
fi
export NODE_PATH="$pw_cache/node_modules${NODE_PATH:+:$NODE_PATH}"

# --- start the gateway ------------------------------------------------------
free_ports() { # prints two distinct free loopback TCP ports
    node -e '
        const net = require("net");
        const open = () => new Promise((ok, ko) => { const s = net.createServer(); s.once("error", ko); s.listen(0, "127.0.0.1", () => ok(s)); });
        Promise.all([open(), open()]).then((ss) => { console.log(ss.map((s) => s.address().port).join(" ")); ss.forEach((s) => s.close()); });
    '
}
# http_up PORT: GET / on the port answers with an HTTP status. (A bare TCP
# connect is not enough: while nothing listens on a port of the ephemeral
# range, connecting to it can "succeed" by connecting to itself.)
http_up() {
    node -e '
        const req = require("http").get({ host: "127.0.0.1", port: +process.argv[1], path: "/", timeout: 1000 }, (res) => {
            res.resume(); process.exit(res.statusCode > 0 ? 0 : 1);
        });
        req.on("timeout", () => req.destroy(new Error("timeout")));
        req.on("error", () => process.exit(1));
    ' "$1" 2>/dev/null
}

data_dir="$workdir/data"
mkdir -p "$data_dir"
ws_port=""
for attempt in 1 2 3; do
    read -r tcp_port ws_port < <(free_ports)
    [[ -n "$ws_port" ]] || die "could not find free loopback ports"
    say "starting $gateway (TCP 127.0.0.1:$tcp_port, WebSocket 127.0.0.1:$ws_port, data dir $data_dir)"
    NO_COLOR=1 "$gateway" --tcp "127.0.0.1:$tcp_port" --ws "127.0.0.1:$ws_port" --admin off --data-dir "$data_dir" \
        >"$workdir/gateway.log" 2>&1 </dev/null &
    gateway_pid=$!
    up=""
    deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        if ! alive "$gateway_pid"; then break; fi
        if http_up "$ws_port"; then up=1; break; fi
        sleep 0.2
    done
    [[ -n "$up" ]] && break
    if alive "$gateway_pid"; then
        die "the gateway did not accept connections on 127.0.0.1:$ws_port within 20s"
    fi
    rc=0; wait "$gateway_pid" || rc=$?; gateway_pid=""
    if grep -qi "address.*in use" "$workdir/gateway.log" && ((attempt < 3)); then
        say "port taken meanwhile (attempt $attempt); retrying with other ports"
        continue
    fi
    die "the gateway exited with status $rc before accepting connections"
done
# The listeners accept connections as soon as they are bound, a moment before
# the banner is printed; give the banner up to 2 more seconds.
for _ in $(seq 1 20); do
    grep -q "tethernet-gateway is up" "$workdir/gateway.log" && break
    sleep 0.1
done
grep -q "tethernet-gateway is up" "$workdir/gateway.log" ||
    say "warning: the gateway accepts connections but has not printed \"tethernet-gateway is up\""
say "gateway up (pid $gateway_pid) after $((SECONDS - start_s))s"

# --- tokens -----------------------------------------------------------------
mint() {
    local tok
    tok="$(timeout -k 2 15 "$gateway" --data-dir "$data_dir" token --user "$1" --rooms lobby 2>"$workdir/token-$1.err")" ||
        { cat "$workdir/token-$1.err" >&2; die "minting a token for $1 failed"; }
    tok="$(printf '%s' "$tok" | tr -d '[:space:]')"
    [[ -n "$tok" ]] || die "minting a token for $1 printed nothing"
    printf '%s' "$tok"
}
token_alice="$(mint alice)"
token_bob="$(mint bob)"
say "minted tokens for alice and bob (room lobby)"

# --- the browser check ------------------------------------------------------
# In the background + wait, so that a signal to this script runs the cleanup
# at once instead of after node has finished.
timeout -k 5 70 node "$script_dir/chat_browser_check.mjs" \
    "http://127.0.0.1:$ws_port/" "$token_alice" "$token_bob" ${SCREENSHOT:+"$SCREENSHOT"} &
check_pid=$!
rc=0
wait "$check_pid" || rc=$?
check_pid=""
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    die "the browser check was killed after 70s" 1
elif [[ $rc -ne 0 ]]; then
    alive "$gateway_pid" || say "note: the gateway (pid $gateway_pid) is no longer running"
    die "the browser check failed (exit status $rc)" "$rc"
fi
if ! alive "$gateway_pid"; then
    die "the gateway died during the check" 1
fi
say "ok: chat browser check passed in $((SECONDS - start_s))s"
