#!/bin/sh
# Air-gapped K3s nodes: the edge-agent image(s) in one tarball that K3s imports at start.
#   k3s/airgap/save-images.sh registry.internal:5000/edge-agent:0.1.0-cpu [more images...]
# Run it where the images are (a Docker engine; DOCKER_HOST is honoured as docker honours it).
# Name each image exactly as the DaemonSet does (the overlay's `images:`): K3s imports them under
# these names, and with `imagePullPolicy: IfNotPresent` the pods then start with no registry.
#
# Writes edge-agent-images.tar in the current directory (OUT=PATH for another name; keep the
# .tar suffix, K3s imports only the suffixes it knows). Copy it to each node's
# /var/lib/rancher/k3s/agent/images/: K3s imports every *.tar there when it starts. Run as
# root on a K3s node, the script also puts it into that node's images directory.
#
# PUSH=HOST:PORT also pushes each image to that registry under the same repository path (the
# registry that registries.yaml's mirror endpoint names), e.g.
# registry.internal:5000/edge-agent:0.1.0-cpu -> HOST:PORT/edge-agent:0.1.0-cpu.
set -eu
[ "$#" -ge 1 ] || { echo "usage: [OUT=FILE.tar] [PUSH=HOST:PORT] $0 IMAGE [IMAGE...]" >&2; exit 2; }
out="${OUT:-edge-agent-images.tar}"
# docker save -o writes a temporary file and renames it: no half-written tarball on failure.
docker save -o "$out" "$@"
echo "wrote $out: copy it to /var/lib/rancher/k3s/agent/images/ on each node"

images=/var/lib/rancher/k3s/agent/images
if [ -d "$images" ] && [ "$(id -u)" -eq 0 ]; then
    # Copied under a name K3s ignores, then renamed: K3s never sees a partial tarball.
    base=$(basename "$out")
    cp "$out" "$images/.$base.part"
    mv -f "$images/.$base.part" "$images/$base"
    echo "copied into this node's K3s images directory ($images)"
fi

if [ -n "${PUSH:-}" ]; then
    for image in "$@"; do
        path="$image"
        case "$image" in
            */*)
                # The first component names a registry when it has a dot or a colon, or is
                # localhost (Docker's and containerd's rule); the rest is the repository path.
                first="${image%%/*}"
                case "$first" in
                    *.* | *:* | localhost) path="${image#*/}" ;;
                    *) ;;
                esac
                ;;
            *) ;;
        esac
        docker tag "$image" "$PUSH/$path"
        docker push "$PUSH/$path"
        echo "pushed $PUSH/$path"
    done
fi
