#!/usr/bin/env bash
# Make sure a Redis server answers for the tests; start or install one if need be.
# Prints the URL the tests should use on its last line. Exit 1: none could be had.
set -uo pipefail
URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}

answers() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c5 <&3 | grep -q PONG) 2>/dev/null; }

if ! answers; then
  if ! command -v redis-server >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "ensure-redis: installing Redis from Debian's packages..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) >&2
  fi
  if command -v redis-server >/dev/null; then
    echo "ensure-redis: starting Redis (nothing kept on disk)..." >&2
    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >&2
    for _ in $(seq 20); do answers && break; sleep 0.5; done
  fi
fi
answers || { echo "ensure-redis: no Redis on 127.0.0.1:6379" >&2; exit 1; }
echo "$URL"
