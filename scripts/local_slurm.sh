#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the `slurm` tests and for trying
# `depthscape study --launcher slurm` (docs/cluster.md).
#
#   bash scripts/local_slurm.sh          install slurm-wlm and munge where missing (apt, root),
#                                        write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd
#   bash scripts/local_slurm.sh stop     stop the three daemons again
#
# The node's CPUs and memory come from nproc and /proc/meminfo; no accounting database
# (sacct only warns). Exits non-zero (one line) where it cannot install or start.
set -euo pipefail

conf_dir=/etc/slurm
state_dir=/var/spool/slurmctld
node_dir=/var/spool/slurmd
log_dir=/var/log/slurm

stop() {
    for daemon in slurmd slurmctld munged; do
        pid=$(pgrep -x "$daemon" || true)
        [ -n "$pid" ] && kill $pid 2>/dev/null || true
    done
}

if [ "${1:-start}" = stop ]; then
    stop
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "local_slurm.sh: needs root (it installs packages and starts daemons)" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "local_slurm.sh: slurm-wlm is not installed and apt-get is unavailable" >&2
        exit 1
    fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) \
        >/dev/null 2>&1 || { echo "local_slurm.sh: apt-get could not install slurm-wlm and munge" >&2; exit 1; }
fi

host=$(hostname -s)
cpus=$(nproc)
# RealMemory in MiB, a little under what the kernel reports (slurmd refuses to start otherwise)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$conf_dir" "$state_dir" "$node_dir" "$log_dir" /run/munge /var/lib/munge /var/log/munge
cat > "$conf_dir/slurm.conf" <<CONF
# written by depthscape's scripts/local_slurm.sh: one node, no accounting database
ClusterName=depthscape
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state_dir
SlurmdSpoolDir=$node_dir
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
KillWait=10
MinJobAge=300
SchedulerParameters=defer_batch=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key

pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged 2>/dev/null || munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 30); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "local_slurm.sh: one-node Slurm up ($host: $cpus CPUs, ${mem} MiB; partition debug)"
        exit 0
    fi
    sleep 1
done
echo "local_slurm.sh: the daemons did not bring node $host up; see $log_dir" >&2
exit 1
