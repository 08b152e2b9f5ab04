#!/usr/bin/env bash
# The test command: install everything, make PostgreSQL available, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev

export HF_HUB_DISABLE_TELEMETRY=1
# The browser tests drive Debian's Chromium (Playwright cannot download its own here).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "Installing Chromium for the browser tests..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) >&2 \
    || echo "Chromium could not be installed: the browser tests will be skipped." >&2
fi
if url=$(scripts/ensure-postgres.sh | tail -1) && [ -n "$url" ]; then
  export TEST_POSTGRES_URL=$url
  export REQUIRE_POSTGRES=1  # it answered: a failure to use it is a failure, not a skip
else
  echo "PostgreSQL could not be had here: its tests will be skipped." >&2
fi
if url=$(scripts/ensure-redis.sh | tail -1) && [ -n "$url" ]; then
  export TEST_REDIS_URL=$url REQUIRE_REDIS=1
else
  echo "Redis could not be had here: its tests will be skipped." >&2
fi

.venv/bin/ruff check backend frontend tests bench
.venv/bin/ruff format --check backend frontend tests bench
.venv/bin/mypy  # files and options: [tool.mypy] in pyproject.toml
.venv/bin/lint-imports --no-cache  # the layers and no import cycles: [tool.importlinter]
.venv/bin/python -m pytest "$@"
