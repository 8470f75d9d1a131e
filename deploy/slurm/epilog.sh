#!/bin/sh
# SLURM Epilog (slurm.conf: Epilog=/etc/slurm/epilog.d/thermoledger.sh): stops the meter that
# prolog.sh started for this job on this node. SIGTERM makes it seal its last chunk, mark the run
# finished and upload within THERMOLEDGER_UPLOAD_TIMEOUT_S; this script waits for it up to
# THERMOLEDGER_STOP_TIMEOUT_S (default 60 s; keep it under slurm.conf's PrologEpilogTimeout),
# then kills it (the spool keeps every sealed chunk: `thermoledger push` sends them later).
# Always exits 0: a failing epilog drains the node.

conf="${THERMOLEDGER_SLURM_CONF:-/etc/thermoledger/slurm.env}"
# shellcheck disable=SC1090
[ -r "$conf" ] && . "$conf"

: "${THERMOLEDGER_RUN_DIR:=/run/thermoledger}"
: "${THERMOLEDGER_STOP_TIMEOUT_S:=60}"

log() { logger -t thermoledger-epilog "job ${SLURM_JOB_ID:-?}: $*" 2>/dev/null || echo "thermoledger-epilog: $*" >&2; }

[ -n "${SLURM_JOB_ID:-}" ] || exit 0
pidfile="$THERMOLEDGER_RUN_DIR/$SLURM_JOB_ID.pid"
[ -s "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if kill -TERM "$pid" 2>/dev/null; then
    waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge $((THERMOLEDGER_STOP_TIMEOUT_S * 10)) ]; then
            log "meter (pid $pid) still running after ${THERMOLEDGER_STOP_TIMEOUT_S} s: killed"
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    log "meter (pid $pid) stopped"
fi
rm -f "$pidfile"
exit 0
