# Helpers for test scripts that run inside the VM (scripts/vm-run.sh).
# Sourced. Expects ZEROBLK (the binary) in the environment.
set -euo pipefail

ZEROBLK="${ZEROBLK:?set ZEROBLK to the zeroblk binary}"
WORK="$(mktemp -d /tmp/zeroblk-vm.XXXXXX)"
# The host's files reach the VM over 9p, page by page and uncached: a debug
# binary took seconds to start each time. Run a copy in the VM's memory.
cp "$ZEROBLK" "$WORK/zeroblk"
ZEROBLK="$WORK/zeroblk"
export ZEROBLK_STORE="file://$WORK/store" ZEROBLK_CACHE_DIR="$WORK/cache"
export PATH="/usr/sbin:/sbin:$PATH"

step() { printf '\n=== [%ss] %s\n' "$SECONDS" "$*"; }
fail() {
    echo "FAILED: $*" >&2
    echo "--- zeroblk serve log" >&2; tail -n 30 "$WORK/serve.log" >&2 || true
    for log in "${ZEROBLK_RUNTIME_DIR:-/nonexistent}"/*.log; do
        [ -f "$log" ] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }
    done
    echo "--- kernel log" >&2; dmesg | tail -n 30 >&2 || true
    exit 1
}

# The pid of the (first) attach daemon.
daemon_pid() { "$ZEROBLK" list --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -n 1; }

# Starts `zeroblk serve ARGS...` in the background on PORT; sets SERVE_PID.
start_serve() {
    local port="$1"; shift
    "$ZEROBLK" serve --listen "127.0.0.1:$port" "$@" >>"$WORK/serve.log" 2>&1 &
    SERVE_PID=$!
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log"; fail "zeroblk serve exited"; }
        sleep 0.1
    done
    cat "$WORK/serve.log"
    fail "zeroblk serve did not listen on $port"
}

# Stops the server with SIGTERM and checks it exits 0 (it commits first).
stop_serve() {
    kill -TERM "$SERVE_PID"
    wait "$SERVE_PID" || { cat "$WORK/serve.log"; fail "zeroblk serve exited non-zero"; }
}
