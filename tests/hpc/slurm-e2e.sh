#!/usr/bin/env bash
# End-to-end test with a real SLURM whose compute node sits behind a firewall.
#
# slurmctld and the warp controller run in the root network namespace (10.200.0.1); slurmd, and
# so every job it starts, runs in a namespace "node" (10.200.0.2) whose nftables firewall drops
# every new inbound connection except slurmd's own port from the head node. Checks:
#   1. workers launched by sbatch of scripts/slurm/warp-workers.sbatch run a batch of tasks to
#      completion, inside the node namespace; scancel of one worker job mid-task loses nothing
#      (its task is handed back and completed by the other job);
#   3. the direct (traditional) mode cannot work there: a direct-mode worker started by a job
#      answers inside the node, but the head node's connection to its port times out.
#   2. `warp-controller serve --provision slurm` submits worker jobs itself for queued work (none
#      for an empty queue), and cancels them when the work is done: no job left in squeue;
#   4. `warp-controller preprocess --port 0 --provision slurm` (the main job) processes simulated
#      movies on workers it submits itself, then leaves no job behind.
#   5. scenario 2 over HTTPS: a controller with a scripts/make-cert.sh pair provisions workers
#      that trust it through the template's ca_file; plain HTTP to it is refused.
#   6. a live session: `preprocess --watch --provision slurm` provisions workers while movies
#      arrive, releases them (no job left) when the "microscope" pauses, provisions again for
#      movies renamed into place later, and ends on SIGTERM with every movie processed once.
#
# Run as root on Debian (installs munge, slurmctld, slurmd, slurm-client, nftables if missing).
# Cleans up everything it started (EXIT trap: PIDs, namespace) also on failure.
# Usage: tests/hpc/slurm-e2e.sh            (builds the binaries with cargo unless BIN is set)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NS=warpnode$$
VH=wv$$h
VN=wv$$n
BASE=$(mktemp -d /tmp/warp-slurm-e2e.XXXXXX)
HEAD=10.200.0.1
NODE=10.200.0.2
log() { echo "[slurm-e2e] $*"; }
fail() { log "FAIL: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then echo "slurm-e2e: needs root (network namespaces, SLURM daemons)" >&2; exit 2; fi
missing=
command -v slurmctld >/dev/null || missing="$missing slurmctld slurmd slurm-client munge"
command -v nft >/dev/null || missing="$missing nftables"
command -v curl >/dev/null || missing="$missing curl"
command -v openssl >/dev/null || missing="$missing openssl"
command -v ip >/dev/null || missing="$missing iproute2"
if [ -n "$missing" ]; then
    log "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
if [ -z "${BIN:-}" ]; then
    (cd "$repo" && cargo build --quiet -p warp-job -p warp-worker --bins)
    BIN=$repo/target/debug
fi
export SLURM_CONF=$BASE/slurm.conf

MUNGE_PID= CTLD_PID= SLURMD_PID= CTRL_PID= PROV_PID= LIVE_PID=
cleanup() {
    set +e
    if [ -n "$CTLD_PID" ]; then
        for j in $(squeue -h -o %i 2>/dev/null); do scancel "$j"; done
        sleep 0.5
    fi
    # slurmd, its step daemons and everything the jobs started live in the node namespace.
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null
    for p in $LIVE_PID $PROV_PID $CTRL_PID $CTLD_PID; do kill "$p" 2>/dev/null; done
    for p in $LIVE_PID $PROV_PID $CTRL_PID $CTLD_PID $SLURMD_PID; do wait "$p" 2>/dev/null; done
    [ -n "$MUNGE_PID" ] && { kill "$MUNGE_PID"; wait "$MUNGE_PID"; }
    ip netns del "$NS" 2>/dev/null
    ip link del "$VH" 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then log "logs kept in $BASE"; else rm -rf "$BASE"; fi
    log "cleaned up"
}
trap cleanup EXIT

# --- the firewalled compute node -------------------------------------------------------------
ip netns add "$NS"
ip link add "$VH" type veth peer name "$VN"
ip link set "$VN" netns "$NS"
ip addr add $HEAD/24 dev "$VH"; ip link set "$VH" up
ip -n "$NS" addr add $NODE/24 dev "$VN"; ip -n "$NS" link set "$VN" up; ip -n "$NS" link set lo up
ip netns exec "$NS" nft -f - <<NFT
table inet warpfw {
  chain input {
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    ct state established,related accept
    ip saddr $HEAD tcp dport 6818 accept
    counter drop
  }
  chain forward { type filter hook forward priority filter; policy drop; }
}
NFT

# --- SLURM -----------------------------------------------------------------------------------
mkdir -p "$BASE"/{state,spool,log,jobs}
cat > "$SLURM_CONF" <<CONF
ClusterName=warpci
SlurmctldHost=localhost($HEAD)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
KillWait=5
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
NodeName=localhost NodeAddr=$NODE CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
if ! { munge -n </dev/null | unmunge; } >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F >"$BASE/log/munged.out" 2>&1 &
    MUNGE_PID=$!
    for _ in $(seq 100); do { munge -n </dev/null | unmunge; } >/dev/null 2>&1 && break; sleep 0.1; done
fi
/usr/sbin/slurmctld -D -f "$SLURM_CONF" >"$BASE/log/slurmctld.out" 2>&1 &
CTLD_PID=$!
nsenter --net=/run/netns/"$NS" /usr/sbin/slurmd -D -f "$SLURM_CONF" -N localhost >"$BASE/log/slurmd.out" 2>&1 &
SLURMD_PID=$!
st=
for _ in $(seq 300); do st=$(sinfo -h -N -o %t 2>/dev/null || true); [ "$st" = idle ] && break; sleep 0.1; done
[ "$st" = idle ] || { tail -n 20 "$BASE"/log/*; fail "SLURM node state '$st'"; }
log "SLURM up, node idle"

wait_gone() { for _ in $(seq 600); do [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0; sleep 0.1; done; return 1; }
wait_running() { for _ in $(seq 300); do [ "$(squeue -h -j "$1" -o %T 2>/dev/null)" = RUNNING ] && return 0; sleep 0.1; done; return 1; }

# --- the controller, in the root namespace ---------------------------------------------------
"$BIN/warp-controller" serve --bind $HEAD --port 0 --port-file "$BASE/port" --token-file "$BASE/token" \
    --heartbeat-timeout 3 --poll-hold 5 >"$BASE/log/controller.out" 2>"$BASE/log/controller.log" &
CTRL_PID=$!
for _ in $(seq 100); do [ -s "$BASE/port" ] && break; sleep 0.05; done
[ -s "$BASE/port" ] || fail "controller did not start: $(cat "$BASE/log/controller.log")"
WARP_CONTROLLER=http://$HEAD:$(cat "$BASE/port")
WARP_TOKEN_FILE=$BASE/token
WARP_TOKEN=$(cat "$BASE/token")
# serve wrote the admin token beside the enrollment one: clients take it, workers never see it.
WARP_ADMIN_TOKEN=$(cat "$BASE/admin-token")
export WARP_CONTROLLER WARP_TOKEN_FILE WARP_TOKEN WARP_ADMIN_TOKEN
ctl() { "$BIN/warp-controller" "$@" --controller "$WARP_CONTROLLER"; }
n_workers() { ctl workers --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
log "controller at $WARP_CONTROLLER"

# --- 1. workers from the sbatch template run a batch; scancel mid-task loses nothing -----------
export WARP_HOME=$repo WARP_WORKER=$BIN/warp-worker WARP_WORKER_ARGS="-s"
A=$(WARP_DEVICES=0 sbatch --parsable -o "$BASE/jobs/workers-a.log" "$repo/scripts/slurm/warp-workers.sbatch")
B=$(WARP_DEVICES=1 sbatch --parsable -o "$BASE/jobs/workers-b.log" "$repo/scripts/slurm/warp-workers.sbatch")
n=0
for _ in $(seq 200); do n=$(n_workers); [ "$n" = 2 ] && break; sleep 0.1; done
[ "$n" = 2 ] || { cat "$BASE"/jobs/*.log; fail "expected 2 workers from jobs $A $B, saw $n"; }
log "jobs $A and $B: 2 workers registered"

where=$(ctl submit --wait --exec -- sh -c 'ip -o -4 addr show')
echo "$where" | grep -q "$NODE" || fail "the worker is not inside the node namespace: $where"
log "a task's 'ip addr' shows $NODE: the workers run on the firewalled node"

ids=()
for i in $(seq 1 12); do ids+=("$(ctl submit --label "batch-$i" --exec -- sh -c "sleep 0.5; echo task $i")"); done
# Cancel job A while its worker runs a task.
busy=
for _ in $(seq 200); do
    busy=$(ctl workers --json | python3 -c '
import json, sys
ws = json.load(sys.stdin)
print(next((w["id"] for w in ws if w["device"] == 0 and w["state"] == "busy"), ""))')
    [ -n "$busy" ] && break
    sleep 0.05
done
[ -n "$busy" ] || fail "the worker of job $A never got a task"
scancel "$A"
wait_gone "$A" || fail "job $A did not end after scancel"
log "job $A scancelled while its worker was busy"
# Wait for every task, then check each one's outcome.
python3 - "$WARP_CONTROLLER" "$WARP_ADMIN_TOKEN" "${ids[@]}" <<'PY' || fail "tasks did not all complete"
import json, sys, urllib.request
url, token, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + token})
    return json.load(opener.open(req, timeout=90))
released = 0
for i, tid in enumerate(ids, 1):
    t = get(f"/api/tasks/{tid}/wait?timeout_s=60")
    assert t["state"] == "completed", (tid, t["state"], t.get("error"))
    out = t["result"]["results"][0]["stdout_tail"]
    assert out == f"task {i}\n", (tid, out)
    released += sum(a["outcome"] == "released" for a in t["history"])
print(f"[slurm-e2e] all {len(ids)} tasks completed with their own output; "
      f"{released} attempt(s) handed back by the cancelled job")
assert released >= 1, "the cancelled job's task was not handed back"
PY
scancel "$B"
wait_gone "$B" || fail "job $B did not end"
grep -q "all workers exited (status 0)" "$BASE/jobs/workers-a.log" \
    || { cat "$BASE/jobs/workers-a.log"; fail "job $A's workers did not exit cleanly"; }
log "PASS 1: sbatch-launched workers on a firewalled node; scancel mid-task lost nothing"

# --- 2. the controller provisions its own workers from an empty cluster, and cancels them -------
[ -z "$(squeue -h -o %i)" ] || fail "jobs left before the provisioning test: $(squeue -h)"
mkdir -p "$BASE/prov"
WARP_PROVISION_TICK=0.3 WARP_PROVISION_DRAIN_AFTER=2 \
"$BIN/warp-controller" serve --bind $HEAD --port 0 --port-file "$BASE/prov/port" --token-file "$BASE/token" \
    --heartbeat-timeout 3 --poll-hold 5 \
    --provision slurm --provision-template "$repo/scripts/slurm/warp-workers.provision.sbatch" \
    --provision-dir "$BASE/prov" --provision-var warp_home="$repo" \
    --provision-var worker_args="-s" --max-workers 2 \
    >"$BASE/log/prov-controller.out" 2>"$BASE/log/prov-controller.log" &
PROV_PID=$!
for _ in $(seq 100); do [ -s "$BASE/prov/port" ] && break; sleep 0.05; done
[ -s "$BASE/prov/port" ] || fail "provisioning controller did not start: $(cat "$BASE/log/prov-controller.log")"
PURL=http://$HEAD:$(cat "$BASE/prov/port")
sleep 1
[ -z "$(squeue -h -o %i)" ] || fail "a job was submitted for an empty queue"
export WARP_WORKER=$BIN/warp-worker
for i in $(seq 1 6); do
    "$BIN/warp-controller" submit --controller "$PURL" --exec -- sh -c "sleep 0.3; echo provisioned $i" >>"$BASE/prov/ids"
done
python3 - "$PURL" "$WARP_ADMIN_TOKEN" $(cat "$BASE/prov/ids") <<'PY' || fail "provisioned workers did not complete the tasks"
import json, sys, urllib.request
url, token, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + token})
    return json.load(opener.open(req, timeout=120))
for tid in ids:
    t = get(f"/api/tasks/{tid}/wait?timeout_s=90")
    assert t["state"] == "completed", (tid, t["state"], t.get("error"))
st = get("/api/workers/status")
print(f"[slurm-e2e] {len(ids)} tasks completed by provisioned workers; "
      f"jobs submitted: {st['provisioning']['submitted_total']}")
assert 1 <= st["provisioning"]["submitted_total"] <= 2, st["provisioning"]
PY
"$BIN/warp-controller" status --controller "$PURL" | sed 's/^/[slurm-e2e]   /'
gone=
for _ in $(seq 200); do [ -z "$(squeue -h -o %i)" ] && { gone=1; break; }; sleep 0.1; done
[ -n "$gone" ] || fail "provisioned jobs still queued after the work was done: $(squeue -h)"
kill "$PROV_PID"; wait "$PROV_PID" || fail "provisioning controller did not exit cleanly"
PROV_PID=
# A controller stopped while its jobs still serve cancels them on the way out.
rm -f "$BASE/prov/port"
WARP_PROVISION_TICK=0.3 \
"$BIN/warp-controller" serve --bind $HEAD --port 0 --port-file "$BASE/prov/port" --token-file "$BASE/token" \
    --provision slurm --provision-template "$repo/scripts/slurm/warp-workers.provision.sbatch" \
    --provision-dir "$BASE/prov" --provision-var warp_home="$repo" --provision-var worker_args="-s" \
    --max-workers 1 >>"$BASE/log/prov-controller.out" 2>>"$BASE/log/prov-controller.log" &
PROV_PID=$!
for _ in $(seq 100); do [ -s "$BASE/prov/port" ] && break; sleep 0.05; done
PURL=http://$HEAD:$(cat "$BASE/prov/port")
"$BIN/warp-controller" submit --controller "$PURL" --exec -- sleep 60 >/dev/null
serving=
for _ in $(seq 300); do
    "$BIN/warp-controller" status --controller "$PURL" | grep -q serving && { serving=1; break; }
    sleep 0.1
done
[ -n "$serving" ] || fail "no provisioned job started serving: $(squeue -h)"
kill -TERM "$PROV_PID"; wait "$PROV_PID" || fail "provisioning controller did not exit cleanly on SIGTERM"
PROV_PID=
gone=
for _ in $(seq 200); do [ -z "$(squeue -h -o %i)" ] && { gone=1; break; }; sleep 0.1; done
[ -n "$gone" ] || fail "jobs left after the provisioning controller stopped: $(squeue -h)"
log "PASS 2: the controller submitted its own worker jobs for queued work and cancelled them when done, and on SIGTERM"

# --- 3. direct mode cannot be reached on the firewalled node ----------------------------------
D=$(sbatch --parsable -o "$BASE/jobs/direct.log" \
    --wrap "exec $BIN/warp-worker -d 0 -p 0 --bind $NODE --pipe $BASE/direct.port --pulse-timeout 60")
wait_running "$D" || fail "direct-mode job $D did not start"
for _ in $(seq 100); do [ -s "$BASE/direct.port" ] && break; sleep 0.1; done
[ -s "$BASE/direct.port" ] || { cat "$BASE/jobs/direct.log"; fail "the direct-mode worker wrote no port"; }
DP=$(head -n1 "$BASE/direct.port")
DS=$(sed -n 2p "$BASE/direct.port")   # the per-run secret every direct-mode request needs
ip netns exec "$NS" curl -sS --noproxy '*' --max-time 5 -X POST "http://$NODE:$DP/v1/Service/SendPulse" | grep -q unauthorized \
    || fail "the direct-mode worker answers a request without its secret"
ip netns exec "$NS" curl -sS --noproxy '*' --max-time 5 -H "Authorization: Bearer $DS" -X POST "http://$NODE:$DP/v1/Service/SendPulse" | grep -q ok \
    || fail "the direct-mode worker does not answer even inside the node"
rc=0
curl -sS --noproxy '*' --connect-timeout 3 -X POST "http://$NODE:$DP/v1/Service/SendPulse" >/dev/null 2>&1 || rc=$?
[ "$rc" = 28 ] || fail "expected the head node's connection to time out (curl rc 28), got rc $rc"
scancel "$D"
wait_gone "$D" || fail "job $D did not end"
log "PASS 3: direct mode on the firewalled node answers inside it, but the head node's connection timed out (curl rc 28)"
# --- 4. the main job on the cluster: preprocess with workers it provisions itself -------------
[ -z "$(squeue -h -o %i)" ] || fail "jobs left before the preprocess test: $(squeue -h)"
mkdir -p "$BASE/pre"
"$BIN/warp-controller" simulate --output "$BASE/pre/movies" --count 3 --size 128 --frames 4 \
    >"$BASE/log/pre-simulate.log" 2>&1 || fail "simulate failed: $(cat "$BASE/log/pre-simulate.log")"
rc=0
WARP_PROVISION_TICK=0.3 WARP_PROVISION_DRAIN_AFTER=2 timeout 300 \
"$BIN/warp-controller" preprocess --input "$BASE/pre/movies/*.mrc" --output "$BASE/pre/out" \
    --port 0 --bind $HEAD --token-file "$BASE/token" --window 64 \
    --provision slurm --provision-template "$repo/scripts/slurm/warp-workers.provision.sbatch" \
    --provision-dir "$BASE/pre/prov" --provision-var warp_home="$repo" \
    --provision-var worker_args="-s" --max-workers 2 \
    >"$BASE/log/pre.out" 2>"$BASE/log/pre.log" || rc=$?
[ "$rc" = 0 ] || fail "preprocess with provisioned workers exited $rc: $(tail -n 20 "$BASE/log/pre.log")"
for n in sim_0001 sim_0002 sim_0003; do
    [ -s "$BASE/pre/out/$n.json" ] && [ -s "$BASE/pre/out/average/$n.mrc" ] \
        || fail "no output for $n: $(tail -n 20 "$BASE/log/pre.log")"
done
grep -q "provisioning: slurm" "$BASE/log/pre.log" || fail "the job did not provision: $(cat "$BASE/log/pre.log")"
gone=
for _ in $(seq 200); do [ -z "$(squeue -h -o %i)" ] && { gone=1; break; }; sleep 0.1; done
[ -n "$gone" ] || fail "jobs left after the preprocess job ended: $(squeue -h)"
log "PASS 4: preprocess --port --provision slurm processed 3 movies on workers it submitted to the firewalled node, and left no job behind"

# --- 5. the same over HTTPS: provisioned workers reach a TLS controller with a make-cert.sh pair ---
[ -z "$(squeue -h -o %i)" ] || fail "jobs left before the TLS test: $(squeue -h)"
mkdir -p "$BASE/tls"
bash "$repo/scripts/make-cert.sh" "$BASE/tls/cert" $HEAD >/dev/null || fail "make-cert.sh failed"
CA=$BASE/tls/cert/cert.pem
WARP_PROVISION_TICK=0.3 WARP_PROVISION_DRAIN_AFTER=2 \
"$BIN/warp-controller" serve --bind $HEAD --port 0 --port-file "$BASE/tls/port" --token-file "$BASE/token" \
    --heartbeat-timeout 3 --poll-hold 5 --tls-cert "$CA" --tls-key "$BASE/tls/cert/key.pem" \
    --provision slurm --provision-template "$repo/scripts/slurm/warp-workers.provision.sbatch" \
    --provision-dir "$BASE/tls/prov" --provision-var warp_home="$repo" \
    --provision-var worker_args="-s" --max-workers 1 \
    >"$BASE/log/tls-controller.out" 2>"$BASE/log/tls-controller.log" &
PROV_PID=$!
for _ in $(seq 100); do [ -s "$BASE/tls/port" ] && break; sleep 0.05; done
[ -s "$BASE/tls/port" ] || fail "TLS controller did not start: $(cat "$BASE/log/tls-controller.log")"
TP=$(cat "$BASE/tls/port")
TURL=https://$HEAD:$TP
curl -sS --noproxy '*' --max-time 5 "http://$HEAD:$TP/api/health" | grep -q https_required \
    || fail "plain HTTP to the TLS controller was not refused with https_required"
curl -sS --noproxy '*' --max-time 5 --cacert "$CA" "$TURL/api/health" | grep -q '"ok":true' \
    || fail "curl --cacert could not reach $TURL"
for i in 1 2 3; do
    out=$("$BIN/warp-controller" submit --controller "$TURL" --ca-file "$CA" --wait \
        --exec -- sh -c "echo tls-task-$i; ip -o -4 addr show") || fail "TLS task $i: $out"
    echo "$out" | grep -q "tls-task-$i" || fail "TLS task $i has not its own output: $out"
    echo "$out" | grep -q "$NODE" || fail "TLS task $i did not run on the firewalled node: $out"
done
gone=
for _ in $(seq 200); do [ -z "$(squeue -h -o %i)" ] && { gone=1; break; }; sleep 0.1; done
[ -n "$gone" ] || fail "provisioned jobs still queued after the TLS work was done: $(squeue -h)"
kill "$PROV_PID"; wait "$PROV_PID" || fail "TLS controller did not exit cleanly"
PROV_PID=
log "PASS 5: over HTTPS (make-cert.sh pair), provisioned workers on the firewalled node ran 3 tasks; plain HTTP was refused"

# --- 6. a live session: workers provisioned while movies arrive, released in a pause -----------
[ -z "$(squeue -h -o %i)" ] || fail "jobs left before the watch test: $(squeue -h)"
mkdir -p "$BASE/live/incoming"
"$BIN/warp-controller" simulate --output "$BASE/live/sim" --count 3 --size 128 --frames 4 \
    >"$BASE/log/live-simulate.log" 2>&1 || fail "simulate failed: $(cat "$BASE/log/live-simulate.log")"
cp "$BASE/live/sim/sim_0001.mrc" "$BASE/live/incoming/"
WARP_PROVISION_TICK=0.3 WARP_PROVISION_DRAIN_AFTER=2 \
"$BIN/warp-controller" preprocess --input "$BASE/live/incoming/*.mrc" --output "$BASE/live/out" \
    --watch --watch-interval 0.3 --settle 0.5 \
    --port 0 --bind $HEAD --token-file "$BASE/token" --window 64 \
    --provision slurm --provision-template "$repo/scripts/slurm/warp-workers.provision.sbatch" \
    --provision-dir "$BASE/live/prov" --provision-var warp_home="$repo" \
    --provision-var worker_args="-s" --max-workers 1 --verbose \
    >"$BASE/log/live.out" 2>"$BASE/log/live.log" &
LIVE_PID=$!
processed() { python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["items"]))' \
    "$BASE/live/out/processed_items.json" 2>/dev/null || echo 0; }
wait_processed() {
    for _ in $(seq 1200); do [ "$(processed)" = "$1" ] && return 0; sleep 0.1; done
    fail "the watch did not reach $1 processed movie(s): $(tail -n 20 "$BASE/log/live.log")"
}
wait_processed 1
submitted() { grep -c "provisioning: submitted worker job" "$BASE/log/live.log" || true; }
jobs_seen=$(submitted)
[ "$jobs_seen" -ge 1 ] || fail "the watch did not provision a worker job: $(tail -n 20 "$BASE/log/live.log")"
# The pause: the idle worker's job is released while the watch goes on.
gone=
for _ in $(seq 300); do [ -z "$(squeue -h -o %i)" ] && { gone=1; break; }; sleep 0.1; done
[ -n "$gone" ] || fail "the worker job was not released in the pause: $(squeue -h)"
kill -0 "$LIVE_PID" 2>/dev/null || fail "the watch ended in the pause: $(tail -n 20 "$BASE/log/live.log")"
# Acquisition goes on: one movie copied, one written elsewhere and renamed into place (as EPU does).
cp "$BASE/live/sim/sim_0002.mrc" "$BASE/live/incoming/"
cp "$BASE/live/sim/sim_0003.mrc" "$BASE/live/incoming/sim_0003.part"
mv "$BASE/live/incoming/sim_0003.part" "$BASE/live/incoming/sim_0003.mrc"
wait_processed 3
after=$(submitted)
[ "$after" -gt "$jobs_seen" ] || fail "no new worker job for the movies after the pause ($jobs_seen, then $after)"
kill -TERM "$LIVE_PID"
rc=0; wait "$LIVE_PID" || rc=$?
[ "$rc" = 0 ] || fail "the watch exited $rc on SIGTERM: $(tail -n 20 "$BASE/log/live.log")"
for n in sim_0001 sim_0002 sim_0003; do
    [ -s "$BASE/live/out/$n.json" ] || fail "no output for $n"
    grep -q "average/$n.mrc" "$BASE/live/out/micrographs_ctf.star" || fail "$n not in the STAR file"
done
[ "$(grep -c 'average/sim_' "$BASE/live/out/micrographs_ctf.star")" = 3 ] \
    || fail "a movie was processed twice: $(cat "$BASE/live/out/micrographs_ctf.star")"
gone=
for _ in $(seq 200); do [ -z "$(squeue -h -o %i)" ] && { gone=1; break; }; sleep 0.1; done
[ -n "$gone" ] || fail "jobs left after the watch ended: $(squeue -h)"
log "PASS 6: a live session on the cluster: $jobs_seen worker job(s) for the first movie, released in the pause, $((after - jobs_seen)) more for the movies that came later; 3 movies once each, none left queued"

log "ALL PASSED"
