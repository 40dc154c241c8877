#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, for the integration tests (tests/integration/
# test_slurm_cluster.py): munged + slurmctld + slurmd, all as root, no systemd, no cgroups.
#
# Idempotent: installs Debian's slurm-wlm and munge when missing, writes its slurm.conf
# when there is none (or when the one there is its own), starts only the daemons that are
# not running, and waits until the node answers `idle`. Running it again while the cluster
# is up changes nothing. Daemons keep running afterwards (stop them with
# `scripts/start-slurm.sh --stop`). Logs: /var/log/slurm/.
#
#   SLURM_CONF       config to use (default /etc/slurm/slurm.conf); the tests read it too
#   SLURM_WAIT       seconds to wait for the node (default 60)
#   SLURM_NO_INSTALL set to 1 to fail instead of running apt-get
#
# Exit status: 0 the cluster answers; 3 Slurm is not installed and cannot be; 1 otherwise.
set -euo pipefail

CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
WAIT_SECONDS=${SLURM_WAIT:-60}
MARKER="# Written by imagesmith scripts/start-slurm.sh"
STATE=/var/lib/slurm
LOGS=/var/log/slurm
export SLURM_CONF="$CONF"

say() { echo "start-slurm: $*"; }
die() { echo "start-slurm: $*" >&2; exit 1; }

running() { # running PIDFILE: is the process it names alive (and not a zombie)?
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

stop_daemons() { # stop_daemons PIDFILE...: ours only, by the pid each wrote; wait for them
  local pidfile
  for pidfile in "$@"; do
    if running "$pidfile"; then
      say "stopping $(basename "$pidfile" .pid) ($(cat "$pidfile"))"
      kill "$(cat "$pidfile")" || true
    fi
  done
  for _ in $(seq 40); do
    local alive=0
    for pidfile in "$@"; do
      if running "$pidfile"; then alive=1; fi
    done
    [ "$alive" = 0 ] && return 0
    sleep 0.5
  done
  die "daemons did not stop: $*"
}

stop() {
  stop_daemons /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid
}

if [ "${1:-}" = "--stop" ]; then
  stop
  exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root (the daemons and the test jobs run as root)"

# -- packages ----------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  # Exit status 3: Slurm cannot be installed here (the tests skip on it, and only on it).
  if [ "${SLURM_NO_INSTALL:-0}" = 1 ]; then
    echo "start-slurm: slurm-wlm/munge are not installed (SLURM_NO_INSTALL=1)" >&2
    exit 3
  fi
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' own service start-up out of it: no systemd here, and the config
  # is written below.
  apt-get update -qq || true
  if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; then
    echo "start-slurm: apt-get install slurm-wlm munge failed" >&2
    exit 3
  fi
fi

# -- munge ---------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! running /run/munge/munged.pid; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
fi
for _ in $(seq 20); do
  munge -n </dev/null | unmunge >/dev/null 2>&1 && break
  sleep 0.5
done
munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge does not answer (see /var/log/munge/)"

# -- slurm.conf ----------------------------------------------------------------------------
cpus=$(nproc)
# RealMemory above what slurmd finds marks the node invalid: take 3/4 of MemTotal.
memory=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 3 / 4 }' /proc/meminfo)
if [ -f "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
  die "$CONF exists and was not written by this script; point SLURM_CONF elsewhere"
fi
install -d "$(dirname "$CONF")" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
wanted=$(cat <<EOF
$MARKER
# A one-node cluster on loopback for imagesmith's tests. Rewritten on each run.
ClusterName=imagesmith
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$wanted" ]; then
  say "writing $CONF (CPUs=$cpus RealMemory=${memory}M)"
  printf '%s\n' "$wanted" >"$CONF"
  changed=1
fi

# -- daemons ---------------------------------------------------------------------------------
if [ "$changed" = 1 ]; then
  # A config change needs fresh daemons; stop ours (never anything else).
  stop_daemons /run/slurmd.pid /run/slurmctld.pid
fi
if ! running /run/slurmctld.pid; then
  say "starting slurmctld (log: $LOGS/slurmctld.log)"
  slurmctld -f "$CONF"
fi
if ! running /run/slurmd.pid; then
  say "starting slurmd (log: $LOGS/slurmd.log)"
  slurmd -f "$CONF" -N localhost
fi

for _ in $(seq "$((WAIT_SECONDS * 2))"); do
  state=$(sinfo -h -n localhost -o '%T' 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated|completing)
      say "cluster is up (node localhost: $state)"
      exit 0 ;;
    drain*|down*)
      scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
echo "start-slurm: node did not come up within ${WAIT_SECONDS}s (state: ${state:-none})" >&2
tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
exit 1
