#!/bin/bash
# launch-workers.sh: start one warp-worker per GPU on this node and keep them running until
# they exit or this script gets SIGTERM/SIGINT (forwarded: each worker stops its command, hands
# its task back to the controller, which re-queues it at once, and exits 0).
#
# Used by the batch templates (scripts/slurm/warp-workers.sbatch, scripts/pbs/warp-workers.pbs)
# and directly from a plain shell or ssh:
#
#   WARP_CONTROLLER=http://login01:7300 WARP_TOKEN_FILE=~/.warp/token scripts/launch-workers.sh
#   ssh node17 'WARP_CONTROLLER=... WARP_TOKEN_FILE=... /shared/warp/scripts/launch-workers.sh'
#
# Environment:
#   WARP_CONTROLLER   controller URL, http://HOST:PORT (required)
#   WARP_TOKEN_FILE   enrollment token file (required; keep it mode 600 on a shared filesystem)
#   WARP_CA_FILE      for an https:// controller: the certificate (CA) to trust, e.g. the
#                     cert.pem of scripts/make-cert.sh (the workers read it from the environment)
#   WARP_DEVICES      devices to serve, e.g. "0,1" (default: one per entry of
#                     CUDA_VISIBLE_DEVICES, else SLURM_JOB_GPUS, else the lines of PBS_GPUFILE,
#                     numbered 0..n-1 as the job sees them; with none of these, one CPU worker, -1)
#   WARP_WORKER       warp-worker binary (default: ../bin/warp-worker or
#                     ../target/release/warp-worker next to this script, else PATH)
#   WARP_WORKER_ARGS  extra worker flags, e.g. "--idle-exit 600" to free an idle allocation
#
# Exit status: 0 when every worker exited 0, else the last non-zero worker status; 1 when the
# environment is incomplete.
set -u
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
fi
die() { echo "launch-workers: $*" >&2; exit 1; }
[ -n "${WARP_CONTROLLER:-}" ] || die "set WARP_CONTROLLER=http://HOST:PORT or https://HOST:PORT (the controller URL)"
[ -n "${WARP_TOKEN_FILE:-}" ] || die "set WARP_TOKEN_FILE to the enrollment token file"
[ -r "$WARP_TOKEN_FILE" ] || die "cannot read token file $WARP_TOKEN_FILE"
[ -z "${WARP_CA_FILE:-}" ] || [ -r "$WARP_CA_FILE" ] || die "cannot read CA file $WARP_CA_FILE (WARP_CA_FILE)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
worker=${WARP_WORKER:-}
if [ -z "$worker" ]; then
    for c in "$here/../bin/warp-worker" "$here/../target/release/warp-worker"; do
        [ -x "$c" ] && { worker=$c; break; }
    done
    worker=${worker:-warp-worker}
fi
command -v "$worker" >/dev/null 2>&1 || die "warp-worker not found ('$worker'); set WARP_WORKER"

if [ -n "${WARP_DEVICES:-}" ]; then
    devices=${WARP_DEVICES//,/ }
else
    gpus=${CUDA_VISIBLE_DEVICES:-${SLURM_JOB_GPUS:-}}
    if [ -z "$gpus" ] && [ -n "${PBS_GPUFILE:-}" ] && [ -r "$PBS_GPUFILE" ]; then
        gpus=$(paste -sd, "$PBS_GPUFILE")
    fi
    if [ -n "$gpus" ] && [ "$gpus" != "NoDevFiles" ]; then
        IFS=, read -r -a list <<<"$gpus"
        devices=$(seq 0 $((${#list[@]} - 1)))
    else
        devices=-1
    fi
fi

# Workers of one batch job register with the spawn id job-<JOBID>: the controller's provisioner
# tells by it which of its jobs are serving.
job_id=${SLURM_JOB_ID:-${PBS_JOBID:-}}
if [ -z "${WARP_SPAWN_ID:-}" ] && [ -n "$job_id" ]; then
    export WARP_SPAWN_ID=job-$job_id
fi

pids=()
stop() {
    echo "launch-workers: $1: stopping ${#pids[@]} worker(s)"
    [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
}
trap 'stop SIGTERM' TERM
trap 'stop SIGINT' INT

echo "launch-workers: $(hostname), job ${SLURM_JOB_ID:-${PBS_JOBID:-none}}, devices:" $devices", controller $WARP_CONTROLLER"
for d in $devices; do
    # shellcheck disable=SC2086 # WARP_WORKER_ARGS is a list of flags
    "$worker" -d "$d" --controller "$WARP_CONTROLLER" --token-file "$WARP_TOKEN_FILE" ${WARP_WORKER_ARGS:-} &
    pids+=($!)
done

status=0
for p in "${pids[@]}"; do
    while :; do
        wait "$p"
        rc=$?
        # A status above 128 with the worker still there: wait was interrupted by a signal
        # we trapped; keep waiting for the worker itself.
        kill -0 "$p" 2>/dev/null || break
    done
    [ "$rc" -ne 0 ] && status=$rc
done
echo "launch-workers: all workers exited (status $status)"
exit "$status"
