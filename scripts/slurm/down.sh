#!/usr/bin/env bash
# Stops the one-node Slurm cluster that scripts/slurm/up.sh started: slurmd, slurmctld, then munged. Jobs still
# queued are kept in the controller's state and come back with the next up.sh. The packages and
# /etc/slurm/slurm.conf stay. Idempotent: nothing running -> exits 0.
set -uo pipefail
log() { echo "slurm/down.sh: $*"; }

if [ "$(id -u)" != "0" ]; then
  log "not root: run it as root (sudo $0)" >&2
  exit 1
fi

stop() {  # stop <name> <pidfile>: SIGTERM, then wait up to 10 s
  local name=$1 pidfile=$2 pid
  pid=$(cat "$pidfile" 2>/dev/null || pgrep -x "$name" | head -n 1 || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then return 0; fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { log "stopped $name"; return 0; }; sleep 0.1; done
  log "$name (pid $pid) did not stop within 10 s; sending SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
}

stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop munged /run/munge/munged.pid
exit 0
