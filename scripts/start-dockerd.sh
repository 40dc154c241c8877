#!/usr/bin/env bash
# Start the Docker daemon in the background unless one already answers; wait for it.
# For machines without systemd (CI, containers). Idempotent. Log: /var/log/dockerd.log
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
WAIT_SECONDS=${DOCKERD_WAIT:-60}

if docker info >/dev/null 2>&1; then
  echo "start-dockerd: a Docker daemon already answers"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "start-dockerd: dockerd is not installed: apt-get install docker.io (scripts/install-host.sh)" >&2
  exit 1
fi

PIDFILE=/var/run/docker.pid
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "start-dockerd: dockerd is running but not answering yet; waiting"
else
  echo "start-dockerd: starting dockerd (log: $LOG)"
  nohup dockerd >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq "$WAIT_SECONDS"); do
  if docker info >/dev/null 2>&1; then
    echo "start-dockerd: Docker daemon is up"
    exit 0
  fi
  sleep 1
done

echo "start-dockerd: dockerd did not answer within ${WAIT_SECONDS}s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
