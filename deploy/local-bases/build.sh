#!/usr/bin/env bash
# Build the base images of the project's Dockerfile and docker-compose.yml locally, for a machine
# that reaches its Debian mirror and PyPI but no image registry:
#
#   deploy/local-bases/build.sh
#   export PYTHON_IMAGE=imgcls-base/python:3.11 PROMETHEUS_IMAGE=imgcls-base/prometheus:debian
#   docker compose build && docker compose --profile train run --rm trainer && docker compose up -d api prometheus
#
# 1. imgcls-base/debian:<codename>: `debootstrap --variant=minbase` of this machine's Debian
#    release from the mirror its apt sources name, with its apt sources and configuration, then
#    `docker import` (needs root, for debootstrap).
# 2. imgcls-base/python:3.11: Debian's python3 + venv + passwd + CA certificates, and this
#    machine's locally added CA certificates (pip needs them behind an inspecting proxy).
# 3. imgcls-base/prometheus:debian: Debian's prometheus package, laid out like prom/prometheus.
#
# Images that exist are kept (delete them to rebuild). Uses DOCKER_HOST like the docker CLI.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
docker=${DOCKER:-docker}
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
debian_image=imgcls-base/debian:$codename

exists() { "$docker" image inspect "$1" >/dev/null 2>&1; }

mirror() {
    # The first Debian mirror of the apt sources (deb822 .sources files, then one-line lists).
    local uri
    uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
    fi
    [ -n "$uri" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; exit 2; }
    echo "$uri"
}

if ! exists "$debian_image"; then
    command -v debootstrap >/dev/null || { echo "debootstrap is not installed" >&2; exit 2; }
    root=$(mktemp -d /tmp/imgcls-debian-XXXXXX)
    trap 'rm -rf "$root"' EXIT
    echo "debootstrap $codename from $(mirror) into $root"
    debootstrap --variant=minbase "$codename" "$root" "$(mirror)" >/dev/null
    # The machine's apt sources and configuration (mirrors, proxies, keyrings), so that apt
    # inside the image reaches what apt here reaches.
    rm -f "$root"/etc/apt/sources.list
    cp -a /etc/apt/sources.list.d/. "$root"/etc/apt/sources.list.d/
    [ -f /etc/apt/sources.list ] && cp -a /etc/apt/sources.list "$root"/etc/apt/
    cp -a /etc/apt/apt.conf.d/. "$root"/etc/apt/apt.conf.d/
    cp -a /usr/share/keyrings/. "$root"/usr/share/keyrings/ 2>/dev/null || true
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | "$docker" import - "$debian_image" >/dev/null
    rm -rf "$root"
    trap - EXIT
    echo "built $debian_image"
fi

context=$(mktemp -d /tmp/imgcls-bases-XXXXXX)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$context/ca-certificates/" 2>/dev/null || true

build() {  # image, dockerfile
    if exists "$1"; then
        echo "kept $1"
        return
    fi
    # network=host: with the daemon's bridge off, a build container has no network otherwise.
    "$docker" build --network host --build-arg "DEBIAN_IMAGE=$debian_image" \
        -t "$1" -f "$here/$2" "$context" >/dev/null
    echo "built $1"
}
build imgcls-base/python:3.11 python.Dockerfile
build imgcls-base/prometheus:debian prometheus.Dockerfile
