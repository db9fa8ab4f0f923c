#!/usr/bin/env bash
# The main job on a fresh machine: run the sidecar example pod and show that the client
# container reaches nginx in the web container on localhost, then remove the pod.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p podrun -p podrun-cni
# podrun's CNI plugins; with no network configured, podrun installs its default one
# (bridge podrun0, 10.88.0.0/16) in /etc/cni/net.d on first use.
install -D -m 0755 target/release/podrun-bridge /opt/cni/bin/podrun-bridge
install -D -m 0755 target/release/podrun-portmap /opt/cni/bin/podrun-portmap
podrun=target/release/podrun
for img in nginx curl busybox; do "$podrun" image load "images/out/$img.tar"; done
"$podrun" run -d examples/sidecar-pod.yaml
"$podrun" pods
ip=$("$podrun" pods -o json | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' | head -n 1)
echo "+ pod IP: $ip; curl from the host to the pod: curl -s http://$ip/ | grep title"
curl -s --max-time 5 "http://$ip/" | grep title
echo "+ podrun exec sidecar-demo -c client -- curl -s localhost"
"$podrun" exec sidecar-demo -c client -- curl -s localhost
"$podrun" down examples/sidecar-pod.yaml
