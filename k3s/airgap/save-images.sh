#!/bin/sh
# Air-gapped K3s nodes: save the edge-agent image(s) where K3s imports images at start.
#   ./save-images.sh registry.internal:5000/edge-agent:0.1.0-cpu [more images...]
# Run on a machine that has the images (docker), then copy the tarball to each node's
# /var/lib/rancher/k3s/agent/images/ (K3s imports every *.tar there when it starts).
set -eu
[ "$#" -ge 1 ] || { echo "usage: $0 IMAGE [IMAGE...]" >&2; exit 2; }
out="${OUT:-edge-agent-images.tar}"
docker save -o "$out" "$@"
echo "wrote $out: copy it to /var/lib/rancher/k3s/agent/images/ on each node"
if [ -d /var/lib/rancher/k3s/agent/images ] && [ "$(id -u)" -eq 0 ]; then
    cp "$out" /var/lib/rancher/k3s/agent/images/
    echo "copied into this node's K3s airgap images directory"
fi
