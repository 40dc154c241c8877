#!/usr/bin/env bash
# Install what imagesmith's engines and integration tests need on a fresh Debian 12
# machine, as root. Idempotent: run it as often as you like. Does not create the venv.
set -euo pipefail

PACKAGES=(
  docker.io podman catatonit buildah skopeo umoci mmdebstrap
  docker-registry apache2-utils uidmap slirp4netns fuse-overlayfs busybox shellcheck
  dpkg-dev gnupg iproute2
)
CONTAINERS_CONF=${CONTAINERS_CONF:-/etc/containers/containers.conf}

if [ "$(id -u)" -ne 0 ]; then
  echo "install-host: run this as root" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-host: all ${#PACKAGES[@]} packages already installed"
else
  echo "install-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists only when they are missing or older than a day.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 -print -quit 2>/dev/null)" ]; then
    echo "install-host: apt-get update"
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "install-host: installed ${#missing[@]} packages"
fi

# Podman quirk: here every `podman run` fails with "error setting rlimit type 7" unless
# containers get no default ulimits.
mkdir -p "$(dirname "$CONTAINERS_CONF")"
if [ -f "$CONTAINERS_CONF" ] && grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[[[:space:]]*\]' "$CONTAINERS_CONF"; then
  echo "install-host: $CONTAINERS_CONF already sets default_ulimits = []"
elif [ -f "$CONTAINERS_CONF" ] && grep -Eq '^[[:space:]]*\[containers\]' "$CONTAINERS_CONF"; then
  if grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=' "$CONTAINERS_CONF"; then
    sed -i -E 's/^[[:space:]]*default_ulimits[[:space:]]*=.*/default_ulimits = []/' "$CONTAINERS_CONF"
  else
    sed -i -E '0,/^[[:space:]]*\[containers\]/s//[containers]\ndefault_ulimits = []/' "$CONTAINERS_CONF"
  fi
  echo "install-host: set default_ulimits = [] in $CONTAINERS_CONF"
else
  printf '\n[containers]\ndefault_ulimits = []\n' >>"$CONTAINERS_CONF"
  echo "install-host: wrote [containers] default_ulimits = [] to $CONTAINERS_CONF"
fi

echo "install-host: done"
