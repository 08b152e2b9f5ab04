#!/usr/bin/env bash
# Assemble a Hugging Face Space (Docker SDK) in DIR: the backend, the frontend, or both in
# one container (`combined`: one free Space); the files the image needs, the Dockerfile
# under its Space name, and the Space's README header. Then: cd DIR && git init && git remote add space https://huggingface.co/spaces/YOU/NAME
# && git add -A && git commit -m "ragstream" && git push space main
set -euo pipefail
part=${1:?usage: scripts/make-space.sh backend|frontend|combined DIR}
out=${2:?usage: scripts/make-space.sh backend|frontend|combined DIR}
cd "$(dirname "$0")/.."
case "$part" in
  backend)  files=(backend alembic.ini requirements-backend.txt); title="ragstream API"
            dockerfile=Dockerfile.backend ;;
  frontend) files=(frontend .streamlit requirements-frontend.txt); title="ragstream chat"
            dockerfile=Dockerfile.frontend ;;
  combined) files=(backend frontend .streamlit alembic.ini requirements-backend.txt
                   requirements-frontend.txt scripts/space-entrypoint.sh)
            title="ragstream"; dockerfile=Dockerfile.space ;;
  *) echo "usage: scripts/make-space.sh backend|frontend|combined DIR" >&2; exit 2 ;;
esac
# The API Space signs users in with Hugging Face: the Hub then gives it OAUTH_CLIENT_ID,
# OAUTH_CLIENT_SECRET, OAUTH_SCOPES and OPENID_PROVIDER_URL, which the backend picks up; with
# inference-api each user's chats run on their own Hugging Face account (docs/auth.md).
# (The combined Space keeps password accounts: its backend is not reachable from browsers.)
oauth=""
if [ "$part" = backend ]; then
  oauth=$'hf_oauth: true\nhf_oauth_redirect_path: /auth/oidc/callback\nhf_oauth_scopes:\n  - email\n  - inference-api\n'
fi
mkdir -p "$out"
for f in "${files[@]}"; do
  mkdir -p "$out/$(dirname "$f")"
  cp -R "$f" "$out/$(dirname "$f")/"
done
find "$out" -name __pycache__ -type d -prune -exec rm -rf {} +
cp "$dockerfile" "$out/Dockerfile"
cat > "$out/README.md" <<README
---
title: $title
emoji: 💬
colorFrom: indigo
colorTo: blue
sdk: docker
app_port: 7860
pinned: false
${oauth}---

$title, from ragstream. Settings come from the Space's variables and secrets.
README
echo "Space for the $part assembled in $out"
