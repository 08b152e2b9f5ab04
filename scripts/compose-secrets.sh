#!/usr/bin/env bash
# Write the secret files docker-compose.yml mounts (default folder: ./secrets), keeping any
# that exist: a random SECRET_KEY and database password, the DATABASE_URL that goes with
# them, and an empty hf_token (put a Hugging Face token in it to answer with Llama-3).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-secrets}
umask 077
mkdir -p "$dir"
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(48))'; }
[ -s "$dir/secret_key" ] || random > "$dir/secret_key"
[ -s "$dir/postgres_password" ] || random > "$dir/postgres_password"
printf 'postgresql://ragstream:%s@postgres:5432/ragstream\n' \
  "$(cat "$dir/postgres_password")" > "$dir/database_url"
[ -e "$dir/hf_token" ] || : > "$dir/hf_token"
# Compose bind-mounts each file: the containers' own users (uid 1000, postgres) must read
# it; the folder itself stays closed to other users of this machine.
chmod 644 "$dir"/*
echo "Secrets in $dir/: $(cd "$dir" && echo *)"
