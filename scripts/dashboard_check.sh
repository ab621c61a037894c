#!/usr/bin/env bash
# Headless-Chromium smoke test for the tethernet-admin dashboard.
#
# Usage: scripts/dashboard_check.sh ADMIN_URL [SCREENSHOT.png]
#
# Loads ADMIN_URL/ (the dashboard served by a running admin server) in headless
# Chromium, lets the page poll the debug/* JSON endpoints for a few seconds of
# (virtual) time, dumps the DOM and checks that:
#   * <body data-ok="true">  (at least one successful debug/memory fetch), and
#   * every <canvas data-chart=...> has data-samples >= MIN_SAMPLES (default 2).
# With a second argument it also writes a 1280x1000 screenshot of the page.
#
# Environment: CHROMIUM (binary to use), BUDGET_MS (virtual time budget,
# default 6000), MIN_SAMPLES (default 2).
#
# Exit codes: 0 ok, 1 check failed, 2 usage error / chromium missing.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
    echo "usage: $0 ADMIN_URL [SCREENSHOT.png]" >&2
    exit 2
fi
url="${1%/}/"
screenshot="${2:-}"
budget_ms="${BUDGET_MS:-6000}"
min_samples="${MIN_SAMPLES:-2}"
# Hard wall-clock limit per chromium run (virtual time normally makes a run
# take about a second; this only bites if chromium hangs).
run_timeout_s=25

chromium="${CHROMIUM:-}"
if [[ -z "$chromium" ]]; then
    if [[ -x /usr/bin/chromium ]]; then
        chromium=/usr/bin/chromium
    elif command -v chromium >/dev/null 2>&1; then
        chromium="$(command -v chromium)"
    fi
fi
if [[ -z "$chromium" || ! -x "$chromium" ]]; then
    echo "error: chromium not found (${CHROMIUM:+CHROMIUM=$CHROMIUM is not executable; }looked for /usr/bin/chromium and chromium on PATH)." >&2
    echo "install it with:  apt-get install -y chromium" >&2
    exit 2
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/dashboard-check.XXXXXX")"
cleanup() {
    # Kill any chromium process still using our private profile directory
    # (normally none: `timeout` kills its whole process group on expiry).
    local pids
    pids="$(pgrep -f -- "--user-data-dir=$workdir/" || true)"
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

# run_chromium NAME EXTRA_FLAGS... : runs chromium with a fresh profile,
# stdout to $workdir/NAME.out, stderr to $workdir/NAME.err.
run_chromium() {
    local name="$1"
    shift
    local rc=0
    timeout -k 5 "$run_timeout_s" "$chromium" \
        --headless --no-sandbox --disable-gpu --disable-background-networking \
        --no-first-run --no-default-browser-check --disable-extensions \
        --user-data-dir="$workdir/profile-$name/" \
        --virtual-time-budget="$budget_ms" \
        "$@" "$url" >"$workdir/$name.out" 2>"$workdir/$name.err" || rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "FAIL: chromium timed out after ${run_timeout_s}s ($name run). Virtual time stands still" \
            "while a request is pending, so this usually means $url or one of its debug/* endpoints" \
            "never answers." >&2
        show_log "$workdir/$name.err"
        return 1
    elif [[ $rc -ne 0 ]]; then
        echo "FAIL: chromium exited with status $rc ($name run)" >&2
        show_log "$workdir/$name.err"
        return 1
    fi
}

# Last lines of a chromium log, minus the harmless dbus / launcher noise.
show_log() {
    grep -v -e 'dbus' -e 'unexpected operator' -e 'zygote_communication' "$1" | tail -n 10 >&2 || true
}

start=$SECONDS
echo "dashboard check: $url (chromium: $("$chromium" --version 2>/dev/null | head -n 1 || echo '?'), budget ${budget_ms}ms virtual)"

run_chromium dom --dump-dom
dom="$workdir/dom.out"

failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=1
}

if ! grep -q '<body' "$dom"; then
    echo "FAIL: page did not load from $url (empty DOM dump)" >&2
    grep -E 'Page load failed|ERR_' "$workdir/dom.err" | tail -n 3 >&2 || true
    exit 1
fi

body_tag="$(grep -o '<body[^>]*>' "$dom" | head -n 1)"
if [[ "$body_tag" == *'data-ok="true"'* ]]; then
    echo "ok   body data-ok=true (debug/memory fetched)"
else
    fail "body data-ok is not \"true\": the page never fetched debug/memory successfully"
    # Show the page's own error banner text, if any.
    banner="$(tr '\n' ' ' <"$dom" | grep -oE '<div id="error"[^>]*>([^<]|<[^/]|</[^d])*' | head -n 1 \
        | sed -e 's/<\/li>/; /g' -e 's/<[^>]*>/ /g' -e 's/  */ /g' | cut -c1-400 || true)"
    if [[ -n "${banner// /}" ]]; then
        echo "     page error banner:$banner" >&2
    fi
fi

charts=0
while IFS= read -r tag; do
    [[ -z "$tag" ]] && continue
    name="$(sed -n 's/.*data-chart="\([^"]*\)".*/\1/p' <<<"$tag")"
    samples="$(sed -n 's/.*data-samples="\([0-9]*\)".*/\1/p' <<<"$tag")"
    charts=$((charts + 1))
    if [[ -z "$samples" ]]; then
        fail "chart '$name': no data-samples attribute"
    elif ((samples < min_samples)); then
        fail "chart '$name': data-samples=$samples (< $min_samples)"
    else
        printf 'ok   chart %-12s data-samples=%s\n' "$name" "$samples"
    fi
done < <(grep -o '<canvas[^>]*data-chart="[^"]*"[^>]*>' "$dom" || true)
if ((charts == 0)); then
    fail "no <canvas data-chart=...> elements found in the page"
fi

# The tasks card: "owned / unowned". With DASHBOARD_EXPECT_UNOWNED=1 (the CI run starts
# tasks nobody owns on purpose), the unowned count must show and be above zero.
tasks_card="$(grep -o '<div class="value" id="h-tasks">[^<]*' "$dom" | sed 's/.*>//' | head -n 1)"
printf 'info card  tasks owned / unowned: %s\n' "${tasks_card:-?}"
if [[ "${DASHBOARD_EXPECT_UNOWNED:-0}" == 1 ]]; then
    unowned="$(sed -n 's/.* \/ \([0-9,]*\)$/\1/p' <<<"$tasks_card" | tr -d ,)"
    if [[ -n "$unowned" && "$unowned" -gt 0 ]]; then
        echo "ok   unowned tasks shown on the dashboard: $unowned"
    else
        fail "the dashboard shows no unowned tasks (card: '${tasks_card}')"
    fi
fi

# Tables are informational only (they may legitimately be empty).
while IFS= read -r tag; do
    [[ -z "$tag" ]] && continue
    name="$(sed -n 's/.*data-table="\([^"]*\)".*/\1/p' <<<"$tag")"
    rows="$(sed -n 's/.*data-rows="\([0-9]*\)".*/\1/p' <<<"$tag")"
    printf 'info table %-12s data-rows=%s\n' "${name:-?}" "${rows:-?}"
done < <(grep -o '<table[^>]*data-rows="[^"]*"[^>]*>' "$dom" || true)

if [[ -n "$screenshot" ]]; then
    case "$screenshot" in
        /*) shot_path="$screenshot" ;;
        *) shot_path="$PWD/$screenshot" ;;
    esac
    mkdir -p "$(dirname "$shot_path")"
    rm -f "$shot_path"
    if run_chromium shot --hide-scrollbars --window-size=1280,1000 --screenshot="$shot_path" \
        && [[ -s "$shot_path" ]]; then
        echo "ok   screenshot written to $shot_path"
    else
        fail "could not write screenshot to $shot_path"
    fi
fi

elapsed=$((SECONDS - start))
if ((failed)); then
    echo "dashboard check FAILED (${elapsed}s)" >&2
    exit 1
fi
echo "dashboard check passed: $charts charts (${elapsed}s)"
