#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying `prunelab sweep --executor slurm` at home and for the
# tests marked `slurm` (tests/test_slurm.py). Debian/Ubuntu, as root; no systemd needed (works in a container).
#
#   sudo scripts/slurm/up.sh      # install slurm-wlm and munge if missing, write slurm.conf, start the daemons
#   sinfo                         # one partition "debug" with this machine in it, idle
#   sudo scripts/slurm/down.sh    # stop the daemons (the packages and the configuration stay)
#
# Idempotent: when the cluster already answers with an idle node, it says so and exits 0 at once.
# Never destroys another Slurm's configuration: it writes $SLURM_CONF only when that file is missing or carries the
# marker line below (written by this script), and it never replaces an existing munge key; otherwise it refuses in
# one line naming the file (a real Slurm whose daemons are down is left to its administrator).
# The node gets this machine's `nproc` CPUs and 90% of its memory; jobs are scheduled per CPU (and memory), so a
# job of --cpus-per-task 1 leaves the other CPUs to other jobs. No accounting database: sacct is unavailable, as
# on many small clusters (prunelab follows its jobs with squeue).
set -euo pipefail

SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
MUNGE_KEY=${MUNGE_KEY:-/etc/munge/munge.key}
WAIT_S=${SLURM_UP_WAIT_S:-60}
MARKER="# written by prunelab scripts/slurm/up.sh"
log() { echo "slurm/up.sh: $*"; }

ours() {  # ours <file>: missing, or written by this script (its marker line; or the older "Written by prunelab's")
  [ ! -e "$1" ] && return 0
  [ -f "$1" ] && grep -qiE "^# written by prunelab('s)? scripts/slurm/up\.sh" "$1"
}

node_state() { timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true; }

state=$(node_state)
case "$state" in
  idle*|mixed*|allocated*|completing*)
    log "the cluster is already up (node $state)"; exit 0 ;;
esac

# before anything is installed or started: the files this script would write are missing or its own
if ! ours "$SLURM_CONF"; then
  log "refusing to overwrite $SLURM_CONF: it exists and was not written by this script (no line \"$MARKER\"); start that Slurm's own daemons, or move the file away" >&2
  exit 1
fi
if [ -e "$MUNGE_KEY" ] && [ ! -s "$MUNGE_KEY" ]; then
  log "refusing to replace $MUNGE_KEY: it exists but is empty (an existing munge key is never replaced); remove it to have one made" >&2
  exit 1
fi

if [ "$(id -u)" != "0" ]; then
  log "not root: run it as root (sudo $0) to install and start Slurm" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null
fi

# munge: the key every Slurm message is signed with (the package makes one; made here only if it is missing, and
# an existing key is never replaced nor re-owned)
if [ ! -e "$MUNGE_KEY" ]; then
  mkdir -p "$(dirname "$MUNGE_KEY")"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile "$MUNGE_KEY" >/dev/null; else
    (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none); fi
  chown munge:munge "$MUNGE_KEY" && chmod 0400 "$MUNGE_KEY"
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf, from this machine's name, CPUs and memory
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$(dirname "$SLURM_CONF")" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
if ! ours "$SLURM_CONF"; then  # checked again: it may have appeared while the packages were installed
  log "refusing to overwrite $SLURM_CONF: it exists and was not written by this script (no line \"$MARKER\"); start that Slurm's own daemons, or move the file away" >&2
  exit 1
fi
tmp_conf=$(mktemp "$SLURM_CONF.XXXXXX")
cat >"$tmp_conf" <<CONF
$MARKER
# A one-node cluster on $host ($cpus CPUs, $mem_mb MB); rerunning up.sh rewrites it.
ClusterName=prunelab
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups and no systemd: processes tracked through /proc, tasks not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem_mb / cpus))
ReturnToService=2
# short waits, so that cancelled or timed-out jobs leave quickly (a real cluster's defaults are longer)
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=5
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
chmod 0644 "$tmp_conf" && mv -f "$tmp_conf" "$SLURM_CONF"

start() {  # start <daemon>: unless it runs already; a failure names its log
  pgrep -x "$1" >/dev/null && return 0
  "$1" -f "$SLURM_CONF" && return 0
  log "$1 did not start; the end of /var/log/slurm/$1.log:" >&2
  tail -n 5 "/var/log/slurm/$1.log" >&2 2>/dev/null || true
  exit 1
}
start slurmctld
start slurmd

for _ in $(seq $((WAIT_S * 2))); do
  state=$(node_state)
  case "$state" in
    idle*|mixed*|allocated*) log "up: node $host ($cpus CPUs, $mem_mb MB) is $state in partition debug"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
log "the node did not become idle within ${WAIT_S}s (state: ${state:-no answer}); see /var/log/slurm/" >&2
exit 1
