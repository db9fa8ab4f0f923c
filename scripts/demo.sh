#!/usr/bin/env bash
# The main job on a fresh machine: run the sidecar example pod and show that the client
# container reaches nginx in the web container on localhost, then remove the pod.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bin podrun
podrun=target/release/podrun
for img in nginx curl busybox; do "$podrun" image load "images/out/$img.tar"; done
"$podrun" run -d examples/sidecar-pod.yaml
"$podrun" pods
echo "+ podrun exec sidecar-demo -c client -- curl -s localhost"
"$podrun" exec sidecar-demo -c client -- curl -s localhost
"$podrun" down examples/sidecar-pod.yaml
