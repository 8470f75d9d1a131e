#!/bin/sh
# SLURM Prolog (slurm.conf: Prolog=/etc/slurm/prolog.d/thermoledger.sh, PrologFlags=Alloc):
# starts one thermoledger meter on this node for the job's GPUs, in the background, as an
# unprivileged user. The epilog (epilog.sh) stops it with SIGTERM: the meter then seals its last
# chunk, marks the run finished and uploads what it can.
#
# Every node of a job computes the same run id from SLURM_JOB_ID (and SLURM_CLUSTER_NAME), so a
# multi-node job is one run. The meter reads SLURM_JOB_GPUS (the job's GPUs on this node) when
# set, else every GPU of the node.
#
# A prolog that fails drains the node, so this script always exits 0: a meter that cannot start
# is logged, never a reason to refuse the job.
#
# Configuration (environment, or the file THERMOLEDGER_SLURM_CONF, default
# /etc/thermoledger/slurm.env, sourced first):
#   THERMOLEDGER_SERVER, THERMOLEDGER_TOKEN   where to upload (unset: the spool keeps the run)
#   THERMOLEDGER_BIN        the meter command (default: thermoledger)
#   THERMOLEDGER_USER       run the meter as this user when started as root (default:
#                           thermoledger; empty: as whoever runs the prolog)
#   THERMOLEDGER_SPOOL_DIR  spool shared by the node's meters (default /var/lib/thermoledger/spool;
#                           a timer running `thermoledger push` there sends what a final upload
#                           could not)
#   THERMOLEDGER_RUN_DIR    pid and log files (default /run/thermoledger)
#   THERMOLEDGER_METER_ARGS extra arguments for `thermoledger sidecar` (e.g. --metrics-port 9464
#                           --metrics-addr 0.0.0.0: the metrics bind 127.0.0.1 unless told)
#   and any other THERMOLEDGER_* meter setting (THERMOLEDGER_LOG_FORMAT=json ...).

conf="${THERMOLEDGER_SLURM_CONF:-/etc/thermoledger/slurm.env}"
# shellcheck disable=SC1090
[ -r "$conf" ] && . "$conf"

: "${THERMOLEDGER_BIN:=thermoledger}"
: "${THERMOLEDGER_USER=thermoledger}"
: "${THERMOLEDGER_SPOOL_DIR:=/var/lib/thermoledger/spool}"
: "${THERMOLEDGER_RUN_DIR:=/run/thermoledger}"
export THERMOLEDGER_SPOOL_DIR

log() { logger -t thermoledger-prolog "job ${SLURM_JOB_ID:-?}: $*" 2>/dev/null || echo "thermoledger-prolog: $*" >&2; }

if [ -z "${SLURM_JOB_ID:-}" ]; then
    log "SLURM_JOB_ID is not set: not a SLURM prolog; nothing started"
    exit 0
fi
pidfile="$THERMOLEDGER_RUN_DIR/$SLURM_JOB_ID.pid"
logfile="$THERMOLEDGER_RUN_DIR/$SLURM_JOB_ID.log"
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "a meter already runs for this job (pid $(cat "$pidfile"))"
    exit 0
fi
mkdir -p "$THERMOLEDGER_RUN_DIR" "$THERMOLEDGER_SPOOL_DIR" || { log "cannot create directories"; exit 0; }

# As root, hand the meter's directories to the unprivileged user and drop to it.
as_user=""
if [ "$(id -u)" = 0 ] && [ -n "$THERMOLEDGER_USER" ]; then
    if id "$THERMOLEDGER_USER" >/dev/null 2>&1; then
        chown "$THERMOLEDGER_USER" "$THERMOLEDGER_SPOOL_DIR"
        as_user="setpriv --reuid=$THERMOLEDGER_USER --regid=$THERMOLEDGER_USER --init-groups --"
    else
        log "user $THERMOLEDGER_USER does not exist: meter not started (it never runs as root)"
        exit 0
    fi
fi

gpus=""
[ -n "${SLURM_JOB_GPUS:-}" ] && gpus="--gpus $SLURM_JOB_GPUS"

# setsid: the meter outlives this script and is in no process group SLURM signals.
# shellcheck disable=SC2086
setsid $as_user $THERMOLEDGER_BIN sidecar --name "${SLURM_JOB_NAME:-slurm-$SLURM_JOB_ID}" \
    --tag "slurm.job=$SLURM_JOB_ID" --tag "slurm.node=$(hostname)" $gpus \
    ${THERMOLEDGER_METER_ARGS:-} </dev/null >"$logfile" 2>&1 &
echo $! >"$pidfile"
log "meter started (pid $!), log $logfile"
exit 0
