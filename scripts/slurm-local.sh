#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests (Debian's slurmctld, slurmd,
# munge; no systemd, no cgroups). As root.
#
#   scripts/slurm-local.sh install   apt packages (idempotent; daemons not started by apt)
#   scripts/slurm-local.sh up        munged, slurmctld, slurmd; waits until the node is idle
#   scripts/slurm-local.sh down      cancels jobs, stops the three daemons by their pid files
#
# `up` exits 3 when Slurm is not installed or the cluster does not come up (a test skips).
# The recipe and its pitfalls: ../shared/docs/slurm-local.md.
set -euo pipefail

node=localhost
state=/var/spool/slurmctld
spool=/var/spool/slurmd
logs=/var/log/slurm

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
    return 0
  fi
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

pid_of() { # the pid in file $1, if the file exists (read once)
  local p
  p=$(cat "$1" 2>/dev/null || true)
  echo "${p//[^0-9]/}"
}

stop_pidfile() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

up() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null || {
    echo "slurm-local: slurmctld/munged not installed (run: $0 install)" >&2
    exit 3
  }
  [ -f /etc/munge/munge.key ] || {
    echo "slurm-local: /etc/munge/munge.key missing" >&2
    exit 3
  }
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  mkdir -p /etc/slurm "$logs"
  rm -rf "$state" "$spool"
  mkdir -p "$state" "$spool"
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=localtest
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=5
DependencyParameters=kill_invalid_depend
StateSaveLocation=$state
SlurmdSpoolDir=$spool
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  slurmctld
  slurmd -N "$node"
  for _ in $(seq 1 100); do
    if [ "$(timeout 5 sinfo -h -n "$node" -o %t 2>/dev/null || true)" = idle ]; then
      echo "slurm-local: node $node idle"
      return 0
    fi
    sleep 0.2
  done
  echo "slurm-local: node $node did not become idle; see $logs" >&2
  down
  exit 3
}

down() {
  timeout 10 scancel --user=root 2>/dev/null || true
  for _ in $(seq 1 50); do
    [ -z "$(timeout 5 squeue -h 2>/dev/null || true)" ] && break
    sleep 0.2
  done
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
  stop_pidfile /run/munge/munged.pid
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 install|up|down" >&2; exit 2 ;;
esac
