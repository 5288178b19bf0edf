#!/usr/bin/env bash
# Online backup of an attestgate server: the server home (keys, audit checkpoints) and
# Redis's AOF directory, into DEST (a new directory). docs/backup.md explains it.
#
#   deploy/backup.sh DEST
#
# Settings (the same as the services'):
#   ATTESTGATE_SERVER_HOME  the server home (required)
#   ATTESTGATE_REDIS_URL    Redis (default redis://127.0.0.1:6379/0), for redis-cli
#   ATTESTGATE_REDIS_DIR    Redis's --dir, holding appendonlydir/ (default run/redis,
#                           as deploy/run-redis.sh; /var/lib/redis for Debian's service)
#
# Order matters: the server home first, then the AOF. Its audit-checkpoints.jsonl must not
# count more audit entries than the copied log holds, or `audit --verify` of the restored
# server reports a cut tail; a log longer than its newest checkpoint verifies fine.
# While the AOF is copied, Redis's automatic AOF rewrite is switched off (so the file set
# named by the manifest does not change under the copy) and switched back on afterwards.
set -euo pipefail

dest="${1:?usage: deploy/backup.sh DEST}"
home="${ATTESTGATE_SERVER_HOME:?ATTESTGATE_SERVER_HOME is not set}"
url="${ATTESTGATE_REDIS_URL:-redis://127.0.0.1:6379/0}"
redis_dir="${ATTESTGATE_REDIS_DIR:-run/redis}"
aof="$redis_dir/appendonlydir"

[ -e "$dest" ] && { echo "backup: $dest exists; give a new directory" >&2; exit 2; }
[ -d "$home" ] || { echo "backup: no server home at $home" >&2; exit 2; }
[ -d "$aof" ] || { echo "backup: no $aof (is appendonly on? deploy/redis.conf)" >&2; exit 2; }
cli() { redis-cli -u "$url" --no-auth-warning "$@"; }
cli PING >/dev/null || { echo "backup: cannot reach Redis at ${url%%@*}..." >&2; exit 4; }

umask 077
mkdir -p "$dest"
# 1. the server home: noise-static.key, storage.key, audit.key, console.key,
#    audit-checkpoints.jsonl (and ek-ca/ or an allowlist if you keep them there)
cp -a "$home" "$dest/server-home"

# 2. the AOF, with automatic rewrites paused
old_pct="$(cli CONFIG GET auto-aof-rewrite-percentage | tail -n 1)"
trap 'cli CONFIG SET auto-aof-rewrite-percentage "$old_pct" >/dev/null' EXIT
cli CONFIG SET auto-aof-rewrite-percentage 0 >/dev/null
for _ in $(seq 600); do
  info="$(cli INFO persistence | tr -d '\r')"
  grep -q '^aof_rewrite_in_progress:0$' <<<"$info" \
    && grep -q '^aof_rewrite_scheduled:0$' <<<"$info" && break
  sleep 0.1
done
grep -q '^aof_rewrite_in_progress:0$' <<<"$info" \
  || { echo "backup: an AOF rewrite is still running; try again" >&2; exit 1; }
cp -a "$aof" "$dest/appendonlydir"

( cd "$dest" && find . -type f ! -name SHA256SUMS -print0 | sort -z \
    | xargs -0 sha256sum > SHA256SUMS )
echo "backup: $dest (server-home/, appendonlydir/, SHA256SUMS)"
