#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, with accounting, for testing `run_all.py --backend slurm`.
#
#   sudo scripts/local_slurm.sh install   Debian's packages: slurm-wlm, munge, slurmdbd, mariadb-server
#   sudo scripts/local_slurm.sh start     munged, MariaDB, slurmdbd, slurmctld and slurmd; waits until the
#                                         node is idle and sacct answers (about 15 s)
#   sudo scripts/local_slurm.sh stop      stops the daemons it started, by their pid files (the packages and the
#                                         accounting database stay); a munged, MariaDB or Slurm it did not start
#                                         is never touched
#   scripts/local_slurm.sh status         sinfo and sacct, as a user sees them
#
# Accounting is not optional: submitit reads job states with sacct; without slurmdbd every state is UNKNOWN
# and a cancelled task is never reported. Runs as root, needs no cgroups (proctrack/linuxproc,
# task/none). The configuration goes to /etc/slurm/ (where sbatch looks for it); an existing
# slurm.conf that this script did not write is never touched. Its accounting database and database user are
# its own (covid_mobilenet_*), and it sets that user's password each start, so a MariaDB that already has a
# `slurm` user from another set-up is no obstacle. Logs, state and the pid files of what it started:
# $LOCAL_SLURM_DIR.
set -euo pipefail

STATE=${LOCAL_SLURM_DIR:-/var/tmp/covid-mobilenet-slurm}
CONF_DIR=/etc/slurm
MARK="# written by covid-mobilenet scripts/local_slurm.sh"
HOST=$(hostname -s)
DB_PASSWORD=slurmdbd-local
DB_USER=covid_mobilenet_slurmdbd
DB_NAME=covid_mobilenet_slurm_acct
STARTED="$STATE/run/started"  # one line per daemon this script started: munged, mariadb, slurmdbd, slurmctld, slurmd

die() { echo "local_slurm.sh: $*" >&2; exit 1; }
trap 'echo "local_slurm.sh: line $LINENO failed: $BASH_COMMAND (logs: $STATE/log)" >&2' ERR
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (sudo scripts/local_slurm.sh $1)"; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: run COMMAND every half second until it succeeds
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what did not come up within ${seconds} s; see the logs in $STATE/log"
}

install_packages() {
    need_root install
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge slurmdbd mariadb-server mariadb-client
}

write_config() {
    if [ -f "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
        die "$CONF_DIR/slurm.conf exists and was not written by this script; this machine already has a Slurm, use it"
    fi
    local cpus memory_mb
    cpus=$(nproc)
    # At least 4 CPUs declared (config_overrides): two demo tasks of 2 CPUs run side by side on a
    # 2-core CI machine, as `--jobs 2` does locally. Memory: what the machine has, less 1 GiB.
    [ "$cpus" -ge 4 ] || cpus=4
    memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p "$CONF_DIR" "$STATE"/{log,state,spool,run}
    cat > "$CONF_DIR/slurm.conf" <<EOF
$MARK
ClusterName=localcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=30
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$CONF_DIR/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASSWORD
StorageLoc=$DB_NAME
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start() {
    need_root start
    command -v slurmctld >/dev/null || die "Slurm is not installed; run: sudo scripts/local_slurm.sh install"
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "local Slurm is already up"; return 0; fi
    write_config

    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged
        started munged /run/munge/munged.pid
    fi
    wait_for 10 munged munge -n

    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    local mariadb_started=
    if ! mysqladmin ping >/dev/null 2>&1; then
        (mysqld_safe >"$STATE/log/mysqld_safe.log" 2>&1 &)
        mariadb_started=1
    fi
    wait_for 60 MariaDB mysqladmin ping
    # its own pid file (the server runs as mysql and writes it where Debian's configuration says)
    [ -z "$mariadb_started" ] || started mariadb "$(mysql -u root -N -e 'SELECT @@pid_file')"
    mysql -u root <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF

    if ! pgrep -x slurmdbd >/dev/null; then slurmdbd; started slurmdbd "$STATE/run/slurmdbd.pid"; fi
    wait_for 30 slurmdbd sacctmgr -n list cluster
    clusters=$(sacctmgr -n -P list cluster format=cluster)
    grep -qx localcluster <<<"$clusters" || sacctmgr -i add cluster localcluster >/dev/null

    if ! pgrep -x slurmctld >/dev/null; then
        # A controller numbers jobs on from its saved state, else from FirstJobId. Its state ($STATE) and the
        # accounting database (MariaDB's own folder) need not survive together: a machine that kept the database
        # and lost the state numbered jobs from 1 again, and sacct answered for a new job with an old job of the
        # same number (CANCELLED, so the sweep saw its tasks cancelled at once). So the controller always starts
        # afresh, past the last job the accounting knows.
        rm -rf "$STATE/state" && mkdir -p "$STATE/state"
        local last
        last=$(mysql -u root -N -e "SELECT COALESCE(MAX(id_job), 0) FROM $DB_NAME.localcluster_job_table" 2>/dev/null) || last=0
        sed -i '/^FirstJobId=/d' "$CONF_DIR/slurm.conf"
        echo "FirstJobId=$((${last:-0} + 1))" >> "$CONF_DIR/slurm.conf"
        slurmctld; started slurmctld "$STATE/run/slurmctld.pid"
    fi
    if ! pgrep -x slurmd >/dev/null; then slurmd -N "$HOST"; started slurmd "$STATE/run/slurmd.pid"; fi
    wait_for 60 "the node" bash -c "sinfo -h -N -o %T | grep -qx idle"
    wait_for 30 sacct sacct -n -X
    echo "local Slurm is up: node $HOST idle, partition debug, accounting answering"
}

started() {  # started DAEMON PIDFILE: note that this script started it, so that stop stops it and nothing else
    mkdir -p "$STATE/run"
    grep -v "^$1 " "$STARTED" 2>/dev/null > "$STARTED.new" || true
    echo "$1 $2" >> "$STARTED.new" && mv "$STARTED.new" "$STARTED"
}

alive() {  # alive PID: the process runs (a zombie, ended but not yet reaped by its parent, does not)
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}

ours() {  # ours DAEMON: the pid in the pid file noted when this script started it, while that process still runs
    local pidfile pid
    pidfile=$(awk -v d="$1" '$1 == d {print $2}' "$STARTED" 2>/dev/null)
    [ -n "$pidfile" ] || return 1
    for _ in $(seq 20); do [ -s "$pidfile" ] && break; sleep 0.25; done
    pid=$(head -n1 "$pidfile" 2>/dev/null | tr -dc 0-9)
    [ -n "$pid" ] && alive "$pid" || return 1
    echo "$pid"
}

stop() {
    need_root stop
    local daemon pid
    for daemon in slurmd slurmctld slurmdbd mariadb munged; do
        if pid=$(ours "$daemon"); then
            kill "$pid"
            for _ in $(seq 80); do alive "$pid" || break; sleep 0.25; done
        fi
        if [ -f "$STARTED" ]; then grep -v "^$daemon " "$STARTED" > "$STARTED.new" || true; mv "$STARTED.new" "$STARTED"; fi
    done
    echo "local Slurm stopped (the daemons it had started; nothing else)"
}

status() {
    sinfo
    sacct -n -X --starttime now-1hours | tail -n 20
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
