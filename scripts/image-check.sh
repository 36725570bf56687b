#!/usr/bin/env bash
# `make image-check`: the container as a user gets it. Installs and configures podman (first run
# only), makes the stand-in base image (cached), then builds the image from the Dockerfile and
# runs it as docker-compose.yml does (scripts/image_check.py: one line per check). Needs root
# (or sudo) for the first run, pip's access to PyPI, and about 2 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/podman-setup.sh > /dev/null
bash scripts/podman-base.sh
# the system python3: PyYAML comes with podman-compose
exec /usr/bin/python3 scripts/image_check.py "$@"
