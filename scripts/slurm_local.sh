#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try `make experiment SCHEDULER=slurm` before a real cluster and for
# the tests: Debian's slurm-wlm and munge, one partition `local` holding this node with all its cores.
#   scripts/slurm_local.sh start    install (apt) if needed, write /etc/slurm/slurm.conf, start munged, slurmctld,
#                                   slurmd; wait until the node takes jobs. Idempotent: a running cluster is left as is.
#   scripts/slurm_local.sh stop     stop the three daemons (the configuration stays)
#   scripts/slurm_local.sh status   exit 0 when the node takes jobs
# The node runs one job at a time (select/linear: a job gets the whole node), which is what a small machine can
# take: two training processes on two cores slow each other 10-30x. It never touches a slurm.conf that this
# script did not write. Needs root (or sudo) for apt and the daemons.
set -euo pipefail

MARK="# written by covidseg scripts/slurm_local.sh"
CONF=/etc/slurm/slurm.conf
SPOOL=/var/spool/covidseg-slurm
LOGS=/var/log/covidseg-slurm

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "slurm-local: needs root or sudo for: $*" >&2; exit 1; fi
}

node_ready() {
    command -v sinfo >/dev/null || return 1
    local state
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n 1) || return 1
    case "$state" in idle|mix|alloc|comp) return 0 ;; *) return 1 ;; esac
}

install_packages() {
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
        echo "slurm-local: installing Debian's slurm-wlm and munge"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null \
            || { as_root apt-get update -q >/dev/null && \
                 as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }
    fi
}

write_configuration() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "slurm-local: $CONF exists and was not written by this script: this machine has its own SLURM" \
             "configuration, left as it is (use that cluster, or move the file away first)" >&2
        exit 1
    fi
    local node
    node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=... RealMemory=...: what slurmd finds here
    as_root mkdir -p "$(dirname "$CONF")" "$SPOOL/ctld" "$SPOOL/d" "$LOGS"
    as_root tee "$CONF" >/dev/null <<EOF
$MARK
ClusterName=covidseg-local
SlurmctldHost=$(hostname -s)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/linear
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/covidseg-slurmctld.pid
SlurmdPidFile=/run/covidseg-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=10
$node State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if ! pgrep -x munged >/dev/null; then
        as_root mkdir -p /run/munge
        as_root chown munge:munge /run/munge
        as_root runuser -u munge -- /usr/sbin/munged
    fi
}

start() {
    if node_ready; then
        echo "slurm-local: running ($(sinfo -h -o '%P %D node(s) %c CPU(s) %t'))"
        return 0
    fi
    install_packages
    write_configuration
    start_munge
    pgrep -x slurmctld >/dev/null || as_root /usr/sbin/slurmctld
    pgrep -x slurmd >/dev/null || as_root /usr/sbin/slurmd
    for _ in $(seq 60); do
        if node_ready; then
            echo "slurm-local: started ($(sinfo -h -o '%P %D node(s) %c CPU(s) %t')); stop it with make slurm-local-stop"
            return 0
        fi
        sleep 1
    done
    echo "slurm-local: the node did not become ready in 60 s; the daemons' logs are in $LOGS:" >&2
    tail -n 5 "$LOGS"/*.log >&2 || true
    exit 1
}

stop() {
    local daemon
    for daemon in slurmd slurmctld munged; do
        if pgrep -x "$daemon" >/dev/null; then as_root pkill -x "$daemon"; fi
    done
    for _ in $(seq 20); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || break
        sleep 0.5
    done
    echo "slurm-local: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) node_ready ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
