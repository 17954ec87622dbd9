#!/bin/sh
# The real components the integration tests drive, from Debian's apt: Prometheus + promtool
# (metrics, alert rules), systemd-nspawn (the unit under real systemd), qemu + busybox (a real
# softdog in a guest), docker-registry (an OCI registry for models), docker + debootstrap (the
# image, built from a local base), procps (pgrep, for the systemd test; a minimal Debian lacks
# it), iproute2 (ip netns: a node's uplink cut in the fleet simulation), and python3-venv for
# README's venv (the next step of its test command). Installs what is missing when run as root;
# otherwise says what is missing (those tests then skip, or fail with CI=true) and carries on.
set -eu
missing=""
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v systemd-nspawn >/dev/null 2>&1 || missing="$missing systemd-container"
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing="$missing qemu-system-x86"
command -v busybox >/dev/null 2>&1 || missing="$missing busybox-static"
command -v docker-registry >/dev/null 2>&1 || missing="$missing docker-registry"
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v pgrep >/dev/null 2>&1 || missing="$missing procps"  # not in a minimal Debian
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"  # the fleet simulation's netns
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "not root: not installing$missing (the tests that need them will skip)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
