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
MUNGE_STARTED=/run/covidseg-munged.started   # munged was started here (a machine's own munged is left running)

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "slurm-local: needs root or sudo for: $*" >&2; exit 1; fi
}

ours() {
    [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"
}

node_ready() {
    ours || return 1  # a login node of a real cluster is not this local cluster
    command -v sinfo >/dev/null || return 1
    local state
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n 1) || return 1
    case "$state" in idle|mix|alloc|comp) return 0 ;; *) return 1 ;; esac
}

install_packages() {
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
        echo "slurm-local: installing Debian's slurm-wlm and munge"
        local log
        log=$(mktemp)
        if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$log" 2>&1; then
            if ! { as_root apt-get update -q && \
                   as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; } >"$log" 2>&1; then
                echo "slurm-local: apt-get could not install slurm-wlm and munge; its last lines:" >&2
                tail -n 5 "$log" >&2
                rm -f "$log"
                exit 1
            fi
        fi
        rm -f "$log"
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
        as_root touch "$MUNGE_STARTED"
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
        case "$(sinfo -h -N -o '%t' 2>/dev/null | head -n 1)" in
            drain*|down*) as_root scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
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

stop_daemon() {  # a daemon of this cluster, by its pid file
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        as_root kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
}

stop() {
    if ! ours; then
        echo "slurm-local: $CONF was not written by this script: there is no local cluster of ours to stop" >&2
        exit 1
    fi
    stop_daemon /run/covidseg-slurmd.pid
    stop_daemon /run/covidseg-slurmctld.pid
    if [ -f "$MUNGE_STARTED" ]; then
        stop_daemon /run/munge/munged.pid
        as_root rm -f "$MUNGE_STARTED"
    fi
    echo "slurm-local: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) node_ready ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
