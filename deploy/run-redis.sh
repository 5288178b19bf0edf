#!/usr/bin/env bash
# Start redis-server in the foreground with deploy/redis.conf, its data (AOF) in run/redis/.
# Used by the Procfile and deploy/supervisord.conf; extra arguments go to redis-server.
# Port: ATTESTGATE_REDIS_PORT (default 6379) — keep ATTESTGATE_REDIS_URL pointing at it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${ATTESTGATE_REDIS_DIR:-run/redis}"
mkdir -p -m 0700 "$dir"
exec redis-server deploy/redis.conf --port "${ATTESTGATE_REDIS_PORT:-6379}" --dir "$dir" "$@"
