#!/usr/bin/env bash
# Which per-service pipelines a change must run, one per line, from the
# workspace's dependency graph (`cargo metadata`, see scripts/pipelines.py):
# a change in crates/products/ runs products and whatever builds or tests
# against it; one in a shared crate (kit, contracts, saga) runs every
# pipeline that depends on it; one under proto/ runs everything that depends
# on contracts, which compiles the protos.
#
#   scripts/changed-services.sh [BASE_REF]    BASE_REF (default main, else origin/main)
#                                             ..HEAD, plus uncommitted and untracked files
#   scripts/changed-services.sh -v [BASE_REF] the same, with each file's reason on stderr
#   scripts/changed-services.sh --paths P...  for the given paths instead of a diff
#   scripts/changed-services.sh --self-check  the examples and the graph's consistency
set -euo pipefail
cd "$(dirname "$0")/.."

verbose=()
if [ "${1:-}" = "-v" ]; then verbose=(-v); shift; fi

case "${1:-}" in
  --self-check)
    exec python3 scripts/pipelines.py self-check
    ;;
  --paths)
    shift
    exec python3 scripts/pipelines.py affected "${verbose[@]}" "$@"
    ;;
  -h | --help)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
    ;;
esac

base=${1:-}
if [ -z "$base" ]; then
  for candidate in main origin/main; do
    if git rev-parse --verify -q "$candidate^{commit}" >/dev/null; then base=$candidate; break; fi
  done
  [ -n "$base" ] || { echo "changed-services: no main or origin/main; name a base ref" >&2; exit 2; }
fi
git rev-parse --verify -q "$base^{commit}" >/dev/null || { echo "changed-services: unknown ref $base" >&2; exit 2; }

# From where HEAD left BASE (what this branch changed, not what BASE did
# since) to the working tree: committed and uncommitted changes in one diff.
# --no-renames lists both sides of a move.
merge_base=$(git merge-base "$base" HEAD)
mapfile -t files < <(
  { git diff --name-only --no-renames "$merge_base"; git ls-files --others --exclude-standard; } | sort -u
)
if [ "${#files[@]}" -eq 0 ]; then exit 0; fi
exec python3 scripts/pipelines.py affected "${verbose[@]}" "${files[@]}"
