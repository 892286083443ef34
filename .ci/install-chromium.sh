#!/usr/bin/env bash
# Install Debian's Chromium for the report's browser tests (tests/test_report_browser.py), which drive it
# headless over the DevTools pipe. Needs root on a Debian/Ubuntu machine; non-interactive.
#
# Usage (as root): .ci/install-chromium.sh
set -euo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    echo "chromium already installed: $(command -v chromium || command -v chromium-browser)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "installing chromium needs root (apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
apt-get update -qq
# With recommends (fonts among them): the combination the tests were checked with.
apt-get install -y -qq chromium >/dev/null
chromium --version 2>/dev/null || true
echo "chromium installed in $(( $(date +%s) - start )) s"
