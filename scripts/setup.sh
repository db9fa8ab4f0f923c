#!/usr/bin/env bash
# Installs what podrun and its tests need on a fresh Debian 12 machine (the test registry,
# the reference CNI plugins for the interoperability tests), and builds the example
# images (offline, from Debian's packages). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in busybox-static nginx-light curl iproute2 nftables iptables containernetworking-plugins docker-registry apache2-utils ca-certificates; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's nginx package starts a service on install; podrun only needs its files.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}"
  if [ "$policy_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

bash images/build.sh
