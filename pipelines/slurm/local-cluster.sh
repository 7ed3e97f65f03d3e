#!/usr/bin/env bash
# A private single-node Slurm cluster in one folder, for tests and trying the pipeline on a
# workstation (run as root; needs the Debian/Ubuntu packages slurm-wlm and munge).
#
#   pipelines/slurm/local-cluster.sh start DIR   # munged + slurmctld + slurmd, all under DIR
#   export SLURM_CONF=DIR/slurm.conf             # then sbatch/squeue/scontrol talk to it
#   pipelines/slurm/local-cluster.sh stop DIR    # cancels its jobs, stops the daemons by their pid files
#
# Everything lives under DIR: munge key, socket, pid, log and seed files; slurm.conf with
# private ports; state, spool, pid and log files. Nothing in /etc, no systemd. The one node
# is `hostname -s` with its CPUs and memory (MEM_FRACTION of it, default 0.8, for jobs).
# Exit status: 0 when the node is idle and a test job ran; 1 with the reason otherwise.
set -euo pipefail

die() { echo "local-cluster: $*" >&2; exit 1; }

free_port() {
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free TCP port found"
}

stop_pidfile() {
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

stop() {
  local dir=$1 pid
  # cancel what still runs in this private cluster first: slurmstepd and the job's
  # processes outlive slurmd otherwise
  pid=$(cat "$dir/slurmctld.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ -f "$dir/slurm.conf" ]; then
    export SLURM_CONF=$dir/slurm.conf
    if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
      scancel --quiet --user="$(id -un)" 2>/dev/null || true
      for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  stop_pidfile "$dir/slurmd.pid"
  stop_pidfile "$dir/slurmctld.pid"
  stop_pidfile "$dir/munged.pid"
}

start() {
  local dir=$1
  for b in munged slurmctld slurmd sbatch scontrol sinfo; do
    command -v "$b" >/dev/null || die "$b not found: install the packages slurm-wlm and munge (apt-get install -y slurm-wlm munge)"
  done
  [ "$(id -u)" = 0 ] || die "run as root (SlurmUser=root, munged as root)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  chmod 700 "$dir/munge"

  # --- munge: own key, socket, pid, log, seed ---
  local sock=$dir/munge/munge.socket
  if [ ! -s "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$sock" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munged.seed" \
    || die "munged did not start (log: $dir/munged.log)"
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || die "munged socket $sock did not appear (log: $dir/munged.log)"
  munge -n -S "$sock" | unmunge -S "$sock" >/dev/null || die "munge round trip failed (log: $dir/munged.log)"

  # --- slurm.conf ---
  local host cpus mem_mb frac=${MEM_FRACTION:-0.8}
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk -v f="$frac" '/^MemTotal:/ {printf "%d", $2 / 1024 * f}' /proc/meminfo)
  cat >"$dir/slurm.conf" <<EOF
# private single-node cluster written by pipelines/slurm/local-cluster.sh
ClusterName=perlrlhf
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
# keep finished jobs visible to scontrol (no accounting database here)
MinJobAge=3600
# time a job gets between SIGTERM and SIGKILL (trainers checkpoint in that window)
KillWait=60
SchedulerParameters=sched_interval=1
DefMemPerCPU=$(( mem_mb / cpus ))
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF" || die "slurmctld did not start (log: $dir/slurmctld.log)"
  slurmd -f "$SLURM_CONF" || die "slurmd did not start (log: $dir/slurmd.log)"
  local state=
  for _ in $(seq 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
    [ "$state" = idle ] && break
    sleep 0.5
  done
  [ "$state" = idle ] || die "node not idle after 30 s (state '${state:-none}'; logs: $dir/slurmctld.log $dir/slurmd.log)"
  # one job through the whole path (submit, schedule, launch, complete)
  local out
  out=$(srun -N1 -n1 -t 1 hostname 2>&1) || die "srun test job failed: $out"
  echo "local-cluster: up in $dir (node $host, $cpus CPUs, ${mem_mb} MB); export SLURM_CONF=$SLURM_CONF" >&2
}

case "${1:-}" in
  start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 start|stop DIR" ;;
esac
