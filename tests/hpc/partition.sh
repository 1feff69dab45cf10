#!/usr/bin/env bash
# Issue 11: a network partition between a worker and the controller.
#
# The controller (with --state-dir) listens on 10.201.0.1 in the root namespace; one worker
# runs in a namespace "node" (10.201.0.2) joined by a veth pair. The link is cut by taking the
# host end down:
#   1. longer than the heartbeat timeout, while the node's task runs: the controller marks the
#      worker lost and re-queues the task, which a second worker completes as attempt 2; the
#      node's late report gets 409 (its result is dropped, nothing is applied twice), and the
#      node worker re-joins under its old id once the link is back;
#   2. shorter than the timeout: the task completes on its first attempt, nothing repeated.
#
# Run as root (network namespaces; installs iproute2 and curl if missing). Cleans up what it
# started (EXIT trap: PIDs, namespace) also on failure.
# Usage: tests/hpc/partition.sh            (builds the binaries with cargo unless BIN is set)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NS=warppart$$
VH=wp$$h
VN=wp$$n
BASE=$(mktemp -d /tmp/warp-partition.XXXXXX)
HEAD=10.201.0.1
NODE=10.201.0.2
log() { echo "[partition] $*"; }
fail() { log "FAIL: $*"; for f in "$BASE"/*.log; do echo "--- $f"; tail -30 "$f"; done; exit 1; }

if [ "$(id -u)" != 0 ]; then echo "partition: needs root (network namespaces)" >&2; exit 2; fi
missing=
command -v ip >/dev/null || missing="$missing iproute2"
command -v curl >/dev/null || missing="$missing curl"
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
if [ -z "${BIN:-}" ]; then
    (cd "$repo" && cargo build --quiet -p warp-job -p warp-worker --bins)
    BIN=$repo/target/debug
fi

CTRL_PID= NODE_PID= HOSTW_PID=
cleanup() {
    set +e
    for p in $HOSTW_PID $NODE_PID $CTRL_PID; do kill -9 "$p" 2>/dev/null; done
    for p in $HOSTW_PID $NODE_PID $CTRL_PID; do wait "$p" 2>/dev/null; done
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    ip link del "$VH" 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then log "logs kept in $BASE"; else rm -rf "$BASE"; fi
}
trap cleanup EXIT

ip netns add "$NS"
ip link add "$VH" type veth peer name "$VN"
ip link set "$VN" netns "$NS"
ip addr add $HEAD/24 dev "$VH"; ip link set "$VH" up
ip -n "$NS" addr add $NODE/24 dev "$VN"; ip -n "$NS" link set "$VN" up; ip -n "$NS" link set lo up

"$BIN/warp-controller" serve --bind $HEAD --port 0 --port-file "$BASE/port" \
    --token-file "$BASE/token" --state-dir "$BASE/state" \
    --heartbeat-timeout 2 --poll-hold 1 --heartbeat-interval 0.2 >"$BASE/controller.log" 2>&1 &
CTRL_PID=$!
for _ in $(seq 100); do [ -s "$BASE/port" ] && break; sleep 0.1; done
[ -s "$BASE/port" ] || fail "the controller did not start"
URL=http://$HEAD:$(cat "$BASE/port")
ADMIN=$(cat "$BASE/admin-token")
api() { curl -sS --noproxy '*' --max-time 10 -H "Authorization: Bearer $ADMIN" "$@"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
submit() { api -H 'Content-Type: application/json' -d "$1" "$URL/api/tasks" | field 'd["id"]'; }
task() { api "$URL/api/workers/tasks/$1"; }
wait_for() { # what, seconds, command...
    local what=$1 secs=$2; shift 2
    for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    fail "timed out waiting for $what"
}
state_is() { [ "$(task "$1" | field 'd["state"]')" = "$2" ]; }

WF=(--backoff-base 0.05 --backoff-max 0.3 --reconnect-for 120)
WARP_TOKEN=$(cat "$BASE/token") ip netns exec "$NS" "$BIN/warp-worker" -d 0 --controller "$URL" "${WF[@]}" \
    >"$BASE/node-worker.log" 2>&1 &
NODE_PID=$!
wait_for "the node's worker" 20 sh -c "[ \"\$(curl -sS --noproxy '*' -H 'Authorization: Bearer $ADMIN' $URL/api/workers/active | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')\" = 1 ]"
NODE_WORKER=$(api "$URL/api/workers/active" | field 'd[0]["id"]')

# --- 1. a cut longer than the heartbeat timeout ----------------------------------------------
T1=$(submit '{"commands":[{"name":"Sleep","params":{"ms":2500}},{"name":"Echo","params":{"value":"one"}}]}')
wait_for "task 1 to run on the node" 20 state_is "$T1" running
ip link set "$VH" down
log "link cut for 4.5 s (heartbeat timeout 2 s)"
sleep 2.6
api "$URL/api/workers/active?all=1" | field '[w["state"] for w in d if w["id"]=="'"$NODE_WORKER"'"][0]' | grep -qx offline \
    || fail "the cut-off worker is not offline"
# A second worker, on the head node, takes the re-queued task.
WARP_TOKEN=$(cat "$BASE/token") "$BIN/warp-worker" -d 1 --controller "$URL" "${WF[@]}" >"$BASE/head-worker.log" 2>&1 &
HOSTW_PID=$!
wait_for "task 1 to complete elsewhere" 30 state_is "$T1" completed
sleep 1.9
ip link set "$VH" up
log "link restored"
wait_for "the node's late report to be refused" 30 grep -q "was revoked (409)" "$BASE/node-worker.log"
D=$(task "$T1")
[ "$(echo "$D" | field 'len(d["history"])')" = 2 ] || fail "task 1: $D"
[ "$(echo "$D" | field 'd["history"][0]["outcome"]')" = worker_lost ] || fail "task 1 attempt 1: $D"
[ "$(echo "$D" | field 'sum(a["outcome"]=="completed" for a in d["history"])')" = 1 ] || fail "task 1 completions: $D"
[ "$(echo "$D" | field 'd["result"]["results"][1]["value"]')" = one ] || fail "task 1 result: $D"
[ "$(echo "$D" | field 'd["worker_id"]')" != "$NODE_WORKER" ] || fail "task 1 completed on the cut-off node"
api "$URL/api/workers/status" | field 'd["stale_reports_refused"]' | grep -qx '[1-9][0-9]*' || fail "no stale report counted"
wait_for "the node's worker to re-join under its id" 20 sh -c \
    "curl -sS --noproxy '*' -H 'Authorization: Bearer $ADMIN' '$URL/api/workers/active' | grep -q $NODE_WORKER"
log "1: task re-assigned and completed once, the late report got 409, the worker re-joined"

# --- 2. a cut shorter than the heartbeat timeout ---------------------------------------------
kill -9 "$HOSTW_PID"; wait "$HOSTW_PID" 2>/dev/null || true; HOSTW_PID=
STALE=$(api "$URL/api/workers/status" | field 'd["stale_reports_refused"]')
T2=$(submit '{"commands":[{"name":"Sleep","params":{"ms":2500}},{"name":"Echo","params":{"value":"two"}}],"target":{"worker":"'"$NODE_WORKER"'"}}')
wait_for "task 2 to run on the node" 20 state_is "$T2" running
ip link set "$VH" down
sleep 1
ip link set "$VH" up
log "link cut for 1 s"
wait_for "task 2 to complete" 30 state_is "$T2" completed
D=$(task "$T2")
[ "$(echo "$D" | field 'len(d["history"])')" = 1 ] || fail "task 2 was repeated: $D"
[ "$(echo "$D" | field 'd["worker_id"]')" = "$NODE_WORKER" ] || fail "task 2: $D"
[ "$(api "$URL/api/workers/status" | field 'd["stale_reports_refused"]')" = "$STALE" ] || fail "a report was refused"
log "2: completed on its first attempt, nothing refused"
log "OK"
