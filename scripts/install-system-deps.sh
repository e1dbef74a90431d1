#!/usr/bin/env bash
# System packages the tests and the speaker-data synthesizer need (Debian/Ubuntu); docker-compose
# validates the compose files (tests/unit/test_deploy.py: no container engine needed); iproute2 and
# nftables impair a test network (tests/reliability/test_network.py, as root); chromium and
# chromium-driver run the web page's test in a real headless browser (tests/integration/test_web_page.py).
# Safe to re-run: installs only what is missing.
set -euo pipefail
PKGS=(espeak-ng sox flite docker-compose iproute2 nftables chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
