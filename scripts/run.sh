#!/usr/bin/env bash
# Run the service on embedded defaults: the backend (API) and the Streamlit app together.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

PORT=${PORT:-8000}
FRONTEND_PORT=${FRONTEND_PORT:-8501}
export HOST=${HOST:-127.0.0.1} PORT
export BACKEND_URL=${BACKEND_URL:-http://127.0.0.1:$PORT}
export HF_HUB_DISABLE_TELEMETRY=1
export LOG_FORMAT=${LOG_FORMAT:-text}

.venv/bin/python -m backend &
backend=$!
trap 'kill $backend ${frontend:-} 2>/dev/null; wait' EXIT INT TERM

for _ in $(seq 120); do
  if .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$BACKEND_URL/ready').status_code != 200)" 2>/dev/null; then
    break
  fi
  kill -0 $backend 2>/dev/null || { echo "The backend failed to start (see above)." >&2; exit 1; }
  sleep 0.5
done

.venv/bin/streamlit run frontend/app.py --server.port "$FRONTEND_PORT" --server.address "$HOST" >/dev/null &
frontend=$!
echo
echo "  ragstream is running."
echo "  Chat app:  http://$HOST:$FRONTEND_PORT"
echo "  API:       $BACKEND_URL  (docs: $BACKEND_URL/docs)"
echo "  Stop with Ctrl-C."
echo
wait -n $backend $frontend
