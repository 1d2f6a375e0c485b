#!/bin/sh
# Install the load generator and the nginx baseline from Debian when they are missing.
# Without root or network the HTTP benchmark falls back to its own asyncio load generator
# and skips nginx, and says so.
set -u
missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$missing"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
      || echo "could not install$missing; continuing without"
  else
    echo "not root or no apt-get; continuing without$missing"
  fi
fi
exit 0
