#!/bin/sh
# System packages the PostgreSQL tests, the console's browser tests and the benchmarks need:
# the PostgreSQL server binaries (initdb, postgres, pg_ctl, psql, pgbench), PgBouncer (the
# benchmark's baseline) and Debian's Chromium (Playwright drives it; no browser download).
# Idempotent and quiet; does nothing when they are present. Installs from Debian with apt-get
# when run as root, without starting Debian's own cluster or pgbouncer service (the tests
# start private servers on free ports). Without root or apt-get it says what is missing and
# carries on: the PostgreSQL and browser tests then skip (they fail instead when CI is set).
set -u
have_pg_server() {
  [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/postgres" ] && return 0
  for bin in /usr/lib/postgresql/*/bin; do
    [ -x "$bin/postgres" ] && [ -x "$bin/initdb" ] && return 0
  done
  return 1
}
missing=""
have_pg_server && command -v pgbench >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 \
  || missing="$missing postgresql postgresql-contrib"
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing="$missing pgbouncer"
# CHROMIUM names another build to drive; otherwise Debian's package provides the binary
{ [ -n "${CHROMIUM:-}" ] && [ -x "$CHROMIUM" ]; } || command -v chromium >/dev/null 2>&1 \
  || missing="$missing chromium"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "not root or no apt-get; tests and benchmarks run without:$missing"
  exit 0
fi
echo "installing:$missing"
# Keep the packages' services down while installing (a policy-rc.d answering 101 is Debian's
# way to say "do not start services"); put back whatever was there before.
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then
  saved="$(mktemp)"
  cp -p "$policy" "$saved"
fi
trap 'if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi' EXIT
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 0755 "$policy"
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing) \
  >/dev/null 2>&1 || echo "could not install$missing; continuing without"
exit 0
