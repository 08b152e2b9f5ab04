#!/usr/bin/env bash
# Make sure a PostgreSQL server answers for the tests; start or install one if need be.
# Prints the admin URL the tests should use on its last line. Exit 1: none could be had.
set -uo pipefail
URL=${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}

answers() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

if ! answers; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1 && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "ensure-postgres: installing PostgreSQL from Debian's packages..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
    fresh=1
  fi
  if ls /etc/postgresql/*/main >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -1)
    echo "ensure-postgres: starting PostgreSQL $version..." >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 2>&1 \
      || su postgres -c "pg_ctlcluster $version main start" >&2 2>&1 || true
    for _ in $(seq 30); do answers && break; sleep 1; done
    if [ "${fresh:-0}" = 1 ]; then
      # A fresh Debian cluster wants a password over TCP: give the tests one.
      su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
      URL=postgresql://postgres:postgres@127.0.0.1:5432/postgres
    fi
  fi
fi
answers || { echo "ensure-postgres: no PostgreSQL on 127.0.0.1:5432" >&2; exit 1; }
echo "$URL"
