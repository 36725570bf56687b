#!/usr/bin/env bash
# A stand-in for the base image `python:3.11-slim` where Docker Hub cannot be reached: Debian
# bookworm (minbase) with python3 (3.11), venv, pip and the CA certificates, bootstrapped from the
# Debian mirror apt already uses, with a venv at /usr/local so that `python` and `pip` are on PATH
# as in the official image. Imported into podman under the official name, so the Dockerfile's FROM
# line stays the real one. Cached: nothing is done when the tag exists (FORCE=1 rebuilds).
set -euo pipefail

TAG=docker.io/library/python:3.11-slim
if [ "${FORCE:-0}" != 1 ] && podman image exists "$TAG"; then
    echo "base: $TAG present (cached)"
    exit 0
fi

# The mirror of the first bookworm source apt uses (deb822 .sources or one-line .list files).
mirror=$(
    { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
      grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
    } | grep -E '/debian/?$' | head -n 1
) || true
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/python-slim-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base: debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$mirror" > "$root.log" 2>&1 || { tail -n 20 "$root.log"; exit 1; }
rm -f "$root.log"
chroot "$root" python3 -m venv /usr/local
chroot "$root" /usr/local/bin/python -c 'import sys, ssl; assert sys.version_info[:2] == (3, 11), sys.version'
# what Debian's slim images leave out too: package caches, documentation, manual pages, translations
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
tar -C "$root" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - localhost/python-slim-standin:bookworm > /dev/null
podman tag localhost/python-slim-standin:bookworm "$TAG"
echo "base: $TAG built ($(podman image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
