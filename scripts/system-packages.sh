#!/usr/bin/env bash
# Installs the Debian packages the tests drive (a browser, redis-server, nginx, systemd-analyze, npm
# for the TypeScript check of the browser client, and curl for scripts/rolling-restart) when they are
# missing.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v npm >/dev/null || missing+=(npm)
command -v curl >/dev/null || missing+=(curl)
((${#missing[@]})) || exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "The tests need: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing ${missing[*]} ..."
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
