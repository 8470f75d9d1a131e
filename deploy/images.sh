#!/usr/bin/env bash
# `make images`: build deploy/Dockerfile's two targets with podman/buildah and run them, offline.
#
#   1. tools     podman, buildah, runc, mmdebstrap (Debian packages) set up by the recipe in
#                ../shared/tools/oci beside the clone (THERMOLEDGER_OCI_TOOLS=DIR elsewhere), and
#                podman-compose in a small venv of its own
#   2. bases     python:3.11-slim and postgres:15 stand-ins made from Debian packages (no
#                registry is reachable here); kept in the local storage, so a warm run skips them
#   3. build     the `service` and `meter` targets (--format docker: keeps the HEALTHCHECK)
#   4. meter     the meter image runs `thermoledger --help` as a user other than root, without
#                the service stack
#   5. compose   deploy/compose.yaml as written, one step at a time: db healthy (its own
#                healthcheck) → migrate exits 0 → service healthy (its healthcheck: /readyz) →
#                /readyz answers on the host's loopback (a free port; 5432 is never published)
#
# Containers, networks and volumes of the compose project are removed on exit, failed or not.
# Each step's output goes to $OCI_DIR/logs/ (shown when the step fails); IMAGES_VERBOSE=1 shows
# it as it runs. Needs root (rootful podman, the packages installed with apt-get).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OCI_TOOLS=${THERMOLEDGER_OCI_TOOLS:-$ROOT/../shared/tools/oci}
export OCI_DIR=${OCI_DIR:-${TMPDIR:-/tmp}/thermoledger-oci}
TAG=${THERMOLEDGER_TAG:-dev}
SERVICE_IMAGE=localhost/thermoledger-service:$TAG
METER_IMAGE=localhost/thermoledger-meter:$TAG
# The recipe's stand-ins: Debian 12's Python 3.11 and PostgreSQL 15.
PYTHON_IMAGE=python:3.11-slim
POSTGRES_IMAGE=postgres:15
PODMAN_COMPOSE='podman-compose>=1.2'
HEALTH_TIMEOUT_S=${IMAGES_HEALTH_TIMEOUT_S:-120}
LOG_DIR=$OCI_DIR/logs
PROJECT=thermoledger-images-$$
COMPOSE=()

die() {
  echo "make images: $*" >&2
  exit 2
}

T0=$EPOCHREALTIME
elapsed() { # seconds since $1, one decimal
  local start=$1 now=$EPOCHREALTIME
  awk -v a="$start" -v b="$now" 'BEGIN { printf "%.1f", b - a }'
}

# step NAME COMMAND...: runs the command (errexit on, in a subshell) with its output in
# $LOG_DIR/NN-NAME.log and what it says with `say` on the terminal, then prints the step's wall
# time; on failure prints the log's tail and stops (the EXIT trap cleans up).
exec 3>&1
say() { echo "    $*" >&3; }
STEP_NO=0
step() {
  local name=$1 start=$EPOCHREALTIME rc log
  shift
  STEP_NO=$((STEP_NO + 1))
  log=$LOG_DIR/$(printf '%02d' "$STEP_NO")-$name.log
  STEP_LOG=$log
  printf '==> %-9s %s\n' "$name" "$DESCRIPTION"
  set +e
  if [ -n "${IMAGES_VERBOSE:-}" ]; then
    (set -e; "$@") 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  else
    (set -e; "$@") >"$log" 2>&1
    rc=$?
  fi
  set -e
  if [ "$rc" -ne 0 ]; then
    printf '    FAILED after %s s (exit %s); the last lines of %s:\n' \
      "$(elapsed "$start")" "$rc" "$log" >&2
    tail -n 40 "$log" | sed 's/^/    | /' >&2
    exit 1
  fi
  printf '    ok %s s\n' "$(elapsed "$start")"
}

# -- the steps ------------------------------------------------------------------------------------

setup_tools() {
  # oci-env.sh installs the Debian packages where missing and writes containers.conf (runtime
  # runc, the ulimits this host allows).
  # shellcheck source=/dev/null
  . "$OCI_TOOLS/oci-env.sh"
  if [ ! -x "$OCI_DIR/compose-venv/bin/podman-compose" ]; then
    python3 -m venv "$OCI_DIR/compose-venv"
    "$OCI_DIR/compose-venv/bin/pip" install --quiet "$PODMAN_COMPOSE"
  fi
  say "$(podman --version), $(buildah --version | cut -d' ' -f1-3), $(runc --version | head -n 1)," \
    "$("$OCI_DIR/compose-venv/bin/podman-compose" --version 2>/dev/null | grep -i '^podman-compose')"
  say "$(podman info --format 'storage: {{.Store.GraphDriverName}} in {{.Store.GraphRoot}}')"
}

make_bases() {
  "$OCI_TOOLS/make-base-images.sh" python postgres
  say "$(podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    --filter reference=localhost/python --filter reference=localhost/postgres | paste -sd, - |
    sed 's/,/, /g')"
}

build_target() { # TARGET IMAGE
  podman build --pull=never --format docker \
    --file "$ROOT/deploy/Dockerfile" --ignorefile "$ROOT/deploy/Dockerfile.dockerignore" \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --target "$1" --tag "$2" "$ROOT"
  local cached
  cached=$(grep -c -- '--> Using cache' "$STEP_LOG" || true)
  say "$2: $(podman image inspect --format '{{.Size}}' "$2" | awk '{ printf "%.0f MB", $1 / 1e6 }')," \
    "user $(podman image inspect --format '{{.Config.User}}' "$2"), $cached steps from the cache"
  case $(podman image inspect --format '{{.Config.User}}' "$2") in
    "" | 0 | 0:* | root | root:*) echo "$2 runs as root" && return 1 ;;
  esac
  if [ "$1" = service ]; then
    local health
    health=$(podman image inspect --format '{{json .HealthCheck}}' "$2")
    echo "healthcheck: $health"
    [[ $health == *"/healthz"* ]] || { echo "the image lost its HEALTHCHECK" && return 1; }
    say "HEALTHCHECK kept: $(jq -r '.Test | join(" ")' <<<"$health" 2>/dev/null || echo "$health")"
  fi
}

smoke_meter() {
  local out uid
  out=$(podman run --rm --init --entrypoint /bin/sh "$METER_IMAGE" -c '
    id -u
    thermoledger --help
    python -c "
import importlib.util
found = [m for m in (\"fastapi\", \"sqlalchemy\", \"alembic\", \"psycopg\") if importlib.util.find_spec(m)]
assert not found, f\"the meter image carries the service stack: {found}\"
"')
  echo "$out"
  uid=$(head -n 1 <<<"$out")
  [ "$uid" != 0 ] || { echo "thermoledger ran as root (uid 0)" && return 1; }
  grep -q '^usage: thermoledger' <<<"$out" || { echo "no usage line from thermoledger --help" && return 1; }
  say "uid $uid: $(grep -m 1 '^usage: thermoledger' <<<"$out")"
  say "no fastapi, sqlalchemy, alembic or psycopg in the image"
}

container_of() { # the compose project's container for service $1
  podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n 1
}

# wait_healthy SERVICE: runs the container's healthcheck from the compose file until it passes
# (podman 4.3 schedules healthchecks with systemd timers, and there is no systemd here; so
# podman-compose cannot wait for `service_healthy`, and the steps are ordered here instead).
wait_healthy() {
  local name start=$EPOCHREALTIME
  name=$(container_of "$1")
  [ -n "$name" ] || { echo "no container for $1" && return 1; }
  until podman healthcheck run "$name"; do
    if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]; then
      echo "$1 stopped:" && podman logs "$name" && return 1
    fi
    if awk -v a="$start" -v b="$EPOCHREALTIME" -v t="$HEALTH_TIMEOUT_S" 'BEGIN { exit !(b - a > t) }'; then
      echo "$1 not healthy after ${HEALTH_TIMEOUT_S} s:" && podman logs "$name" && return 1
    fi
    sleep 0.5
  done
  say "$1 ($name): healthcheck passed $(elapsed "$start") s after start"
}

compose_db() {
  "${COMPOSE[@]}" up --detach --no-build --pull never db
  wait_healthy db
}

compose_migrate() {
  local name rc
  "${COMPOSE[@]}" up --detach --no-build --pull never --no-deps migrate
  name=$(container_of migrate)
  rc=$(podman wait "$name")
  podman logs "$name" 2>&1 | tee /dev/stderr | while IFS= read -r line; do say "$line"; done
  say "exit status $rc"
  [ "$rc" = 0 ]
}

compose_service() {
  local name uid body url=http://127.0.0.1:$THERMOLEDGER_HTTP_PORT/readyz
  "${COMPOSE[@]}" up --detach --no-build --pull never --no-deps service
  wait_healthy service
  name=$(container_of service)
  uid=$(podman exec "$name" id -u)
  [ "$uid" != 0 ] || { echo "the service runs as root" && return 1; }
  body=$(python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$url")
  say "the service runs as uid $uid; GET $url -> 200 $body"
}

cleanup() {
  local rc=$? label=label=io.podman.compose.project=$PROJECT
  trap - EXIT INT TERM
  set +e # everything below runs, whatever fails (a closed terminal included)
  if [ ${#COMPOSE[@]} -gt 0 ]; then
    "${COMPOSE[@]}" down --volumes --timeout 5 >"$LOG_DIR/cleanup.log" 2>&1
    # What `down` left (a step killed half-way), by the project's label.
    {
      podman ps -aq --filter "$label" | xargs -r podman rm -f
      podman network ls -q --filter "$label" | xargs -r podman network rm -f
      podman volume ls -q --filter "$label" | xargs -r podman volume rm -f
    } >>"$LOG_DIR/cleanup.log" 2>&1
    echo "==> cleanup   the compose project $PROJECT: containers, network and volumes removed"
  fi
  if [ "$rc" -eq 0 ]; then
    echo "make images: ok in $(elapsed "$T0") s ($SERVICE_IMAGE, $METER_IMAGE)"
  else
    echo "make images: FAILED after $(elapsed "$T0") s (logs in $LOG_DIR)" >&2
  fi
  exit "$rc"
}

# -- main -----------------------------------------------------------------------------------------

[ -f "$OCI_TOOLS/oci-env.sh" ] && [ -x "$OCI_TOOLS/make-base-images.sh" ] ||
  die "the OCI recipe is not at $OCI_TOOLS (oci-env.sh, make-base-images.sh): it is expected in ../shared/tools/oci beside the clone; set THERMOLEDGER_OCI_TOOLS=DIR to point at it"
[ "$(id -u)" = 0 ] ||
  die "needs root: the images are built and run with rootful podman, and the recipe installs podman, buildah, runc and mmdebstrap with apt-get"
command -v python3 >/dev/null || die "needs python3 (for podman-compose's venv)"
mkdir -p "$LOG_DIR"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap '' PIPE # a closed pipe (`make images | head`) fails a write, and the EXIT trap still runs

DESCRIPTION="podman, buildah, runc, mmdebstrap; podman-compose ($OCI_TOOLS)" step tools setup_tools
export CONTAINERS_CONF=$OCI_DIR/containers.conf
DESCRIPTION="$PYTHON_IMAGE and $POSTGRES_IMAGE stand-ins from Debian packages" \
  step bases make_bases
DESCRIPTION="deploy/Dockerfile --target service -> $SERVICE_IMAGE" \
  step service build_target service "$SERVICE_IMAGE"
DESCRIPTION="deploy/Dockerfile --target meter -> $METER_IMAGE" \
  step meter build_target meter "$METER_IMAGE"
DESCRIPTION="$METER_IMAGE: thermoledger --help as a user other than root" \
  step run-meter smoke_meter

THERMOLEDGER_HTTP_PORT=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
export THERMOLEDGER_TAG=$TAG POSTGRES_IMAGE THERMOLEDGER_HTTP_PORT
export POSTGRES_PASSWORD=images-smoke-$$
COMPOSE=("$OCI_DIR/compose-venv/bin/podman-compose" --in-pod false -p "$PROJECT"
  -f "$ROOT/deploy/compose.yaml")
DESCRIPTION="compose: db ($POSTGRES_IMAGE, not published) until its healthcheck passes" \
  step db compose_db
DESCRIPTION="compose: migrate (thermoledger-server migrate) exits 0" step migrate compose_migrate
DESCRIPTION="compose: service healthy; /readyz on 127.0.0.1:$THERMOLEDGER_HTTP_PORT" \
  step readyz compose_service
