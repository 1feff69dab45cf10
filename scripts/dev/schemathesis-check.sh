#!/usr/bin/env bash
# Runs schemathesis (the public OpenAPI fuzzer, PyPI) against a real controller with one CPU
# worker, with the admin token, every check on; exits non-zero on any finding.
#   scripts/dev/schemathesis-check.sh [BIN_DIR]      # BIN_DIR defaults to target/release
# Needs: python3 -m pip install schemathesis (.ci/run installs it).
set -euo pipefail
bin=${1:-target/release}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
"$bin/warp-controller" serve --bind 127.0.0.1 --port 0 --port-file "$dir/port" \
    --token-file "$dir/token" -q >"$dir/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
[ -s "$dir/port" ] || { cat "$dir/controller.log"; echo "controller did not start" >&2; exit 1; }
url=http://127.0.0.1:$(cat "$dir/port")
# Fuzzed Exec tasks run on this worker: with an empty PATH and cwd, a generated program name
# finds nothing to run.
mkdir -p "$dir/empty"
(cd "$dir/empty" && PATH="$dir/empty" exec "$(realpath "$bin")/warp-worker" -d 0 --backend cpu \
    --controller "$url" --token-file "$dir/token" -s >"$dir/worker.log" 2>&1) &
pids+=($!)
sleep 0.5
# The wait routes hold a request up to its timeout_s (300 s at most): fuzzed, they only wait;
# the end-to-end tests cover them.
schemathesis run "$url/api/openapi.json" --checks all --max-examples "${MAX_EXAMPLES:-30}" \
    --exclude-path '/api/tasks/{id}/wait' --exclude-path '/api/tasks/wait' \
    -H "Authorization: Bearer $(cat "$dir/admin-token")"
# The controller is still up after all of it.
curl -sf --noproxy '*' "$url/api/health" >/dev/null || { echo "the controller died" >&2; exit 1; }
