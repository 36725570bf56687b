#!/usr/bin/env bash
# Installs the Debian packages the tests need, once:
#   chromium, chromium-driver   the browser tests (upload page, docs page, HTML evaluation report)
#   default-jre-headless        Java for coco-caption's PTB tokenizer and METEOR (the jars pycocoevalcap ships)
# Under CI=true a test that skips counts as a failure (tests/conftest.py), so these must be there.
set -euo pipefail
packages=()
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    packages+=(chromium chromium-driver)
fi
if ! command -v java >/dev/null 2>&1; then
    packages+=(default-jre-headless)
fi
if [ "${#packages[@]}" -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "system-deps: missing and not root; install the Debian packages: ${packages[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "system-deps: installing ${packages[*]}" >&2
$SUDO apt-get update -qq
# the JRE package's post-install step needs this folder, which slim images lack
$SUDO mkdir -p /usr/share/man/man1
$SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
