#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying `prunelab sweep --executor slurm` at home and for the
# tests marked `slurm` (tests/test_slurm.py). Debian/Ubuntu, as root; no systemd needed (works in a container).
#
#   sudo scripts/slurm/up.sh      # install slurm-wlm and munge if missing, write slurm.conf, start the daemons
#   sinfo                         # one partition "debug" with this machine in it, idle
#   sudo scripts/slurm/down.sh    # stop the daemons (the packages and the configuration stay)
#
# Idempotent: when the cluster already answers with an idle node, it says so and exits 0 at once.
# The node gets this machine's `nproc` CPUs and 90% of its memory; jobs are scheduled per CPU (and memory), so a
# job of --cpus-per-task 1 leaves the other CPUs to other jobs. No accounting database: sacct is unavailable, as
# on many small clusters (prunelab follows its jobs with squeue).
set -euo pipefail

SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
WAIT_S=${SLURM_UP_WAIT_S:-60}
log() { echo "slurm/up.sh: $*"; }

node_state() { timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true; }

state=$(node_state)
case "$state" in
  idle*|mixed*|allocated*|completing*)
    log "the cluster is already up (node $state)"; exit 0 ;;
esac

if [ "$(id -u)" != "0" ]; then
  log "not root: run it as root (sudo $0) to install and start Slurm" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null
fi

# munge: the key every Slurm message is signed with (the package makes one; made here if it is missing)
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null; else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
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
cat >"$SLURM_CONF" <<CONF
# Written by prunelab's scripts/slurm/up.sh: a one-node cluster on $host ($cpus CPUs, $mem_mb MB).
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
