#!/usr/bin/env bash
# One-Space mode: the backend on 127.0.0.1:$BACKEND_PORT and the chat app on 0.0.0.0:$PORT,
# supervised together. When either exits, the other is stopped and the container ends with
# the first one's exit status, so the platform restarts the whole Space; SIGTERM stops both.
set -uo pipefail
BACKEND_PORT=${BACKEND_PORT:-8000}
APP_PORT=${PORT:-7860}
# The app's upload limit follows the backend's (MB of 2**20 bytes, at least 1).
if [ -n "${MAX_UPLOAD_BYTES:-}" ]; then
  mb=$((MAX_UPLOAD_BYTES / 1048576))
  export STREAMLIT_SERVER_MAX_UPLOAD_SIZE=$((mb > 0 ? mb : 1))
fi

HOST=127.0.0.1 PORT=$BACKEND_PORT python -m backend &
backend=$!
BACKEND_URL=http://127.0.0.1:$BACKEND_PORT \
  streamlit run frontend/app.py --server.port "$APP_PORT" --server.address 0.0.0.0 &
app=$!

stop() { kill -TERM "$backend" "$app" 2>/dev/null; }
trap stop TERM INT
wait -n "$backend" "$app"
status=$?
stop
wait
exit "$status"
