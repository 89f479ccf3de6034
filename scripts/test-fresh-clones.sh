#!/usr/bin/env bash
# Runs `make test` in N fresh clones of this repository's HEAD (default 5), one after
# another, and says how many passed: the check that the suite passes on a clean checkout
# every time, not just most times. Each clone builds its own .venv, as a new machine
# would. Uncommitted changes are not in the clones.
#
#   scripts/test-fresh-clones.sh [N]        # logs in $WORKDIR (default: a new dir in /var/tmp)
set -uo pipefail
n="${1:-5}"
src="$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)"
rev="$(git -C "$src" rev-parse HEAD)"
work="${WORKDIR:-$(mktemp -d /var/tmp/shoal-fresh-clones-XXXXXX)}"
mkdir -p "$work"
# mktemp makes it 0700; the chart cluster's Pods run as the chart's non-root user and
# must reach the clone's .venv and src to start shoal
chmod 755 "$work"
echo "make test in $n fresh clones of $rev ($(date -u +%FT%TZ)); logs in $work"
passed=0
for i in $(seq 1 "$n"); do
  dir="$work/clone-$i"
  log="$work/run-$i.log"
  rm -rf "$dir"
  git clone -q --no-hardlinks "$src" "$dir" && git -C "$dir" checkout -q --detach "$rev"
  start=$(date +%s)
  if (cd "$dir" && make test) >"$log" 2>&1; then
    passed=$((passed + 1))
    verdict=passed
  else
    verdict=FAILED
  fi
  summary="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | tr -d '=' | xargs)"
  echo "run $i/$n: $verdict in $(($(date +%s) - start)) s: ${summary:-no pytest summary (see $log)}"
  rm -rf "$dir"
done
echo "make test from a fresh clone: $passed of $n passed"
[ "$passed" -eq "$n" ]
