#!/usr/bin/env bash
# Runs @fastify/session's own test suite (its test/ folder, unchanged) against TieredSessionStore, with only the store
# swapped: the suite's lib/store.js (MemoryStore, the default store) and test/TestStore.js forward to the adapter.
# The suite is not on npm and must not be vendored, and CI has no network: this is a by-hand check. Results and the
# tests that do not apply: docs/auth-sessions.md.
#
#   scripts/fastify-session-suite/run.sh <clone of github.com/fastify/session> [commit]
#
# The commit defaults to 4f7c3f2, whose index.js and lib/ are byte-identical to the installed @fastify/session 11.1.3;
# the script refuses a commit whose code differs from the installed package.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
clone="${1:?usage: run.sh <fastify/session clone> [commit]}"
commit="${2:-4f7c3f2}"
installed="$root/node_modules/@fastify/session"
work="$(mktemp -d)"
redis_pid=""
cleanup () { [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

for f in index.js lib/session.js lib/store.js lib/cookie.js lib/idGenerator.js; do
  if ! git -C "$clone" show "$commit:$f" | cmp -s - "$installed/$f"; then
    echo "$f at $commit differs from the installed @fastify/session $(node -p "require('$installed/package.json').version")" >&2
    exit 2
  fi
done
cp -r "$installed/index.js" "$installed/lib" "$installed/package.json" "$work/"
git -C "$clone" archive "$commit" test | tar -x -C "$work"
ln -s "$root/node_modules" "$work/node_modules"
cp "$here/store.cjs" "$work/lib/store.js"
echo "'use strict'
module.exports = require('../lib/store').MemoryStore" > "$work/test/TestStore.js"

port="$(cd "$root" && node --import tsx -e "import('./scripts/redis-server.ts').then(async m => console.log(await m.freePort()))")"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

status=0
for f in "$work"/test/*.test.js; do
  out="$work/$(basename "$f").out"
  (cd "$work" && HANDOFF_REDIS_URL="redis://127.0.0.1:$port" node --import tsx --import "$here/setup.mjs" --test "$f") >"$out" 2>&1 || status=1
  echo "$(basename "$f"): $(grep -E '^# (pass|fail) ' "$out" | tr '\n' ' ')$(grep -h 'handoff adapter calls' "$out" || true)"
  grep -E '^not ok' "$out" | sed 's/^/    /' || true
done
exit "$status"
