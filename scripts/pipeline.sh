#!/usr/bin/env bash
# One service's pipeline: the design's stages in order, each timed
# (`== stage X took Ns`), stopping at the first failure with the stage named,
# and a summary table at the end.
#
#   build              cargo build -p SERVICE
#   unit-tests         cargo test -p SERVICE --lib (--bins for a binary)
#   integration-tests  cargo test -p SERVICE --test '*': crates/SERVICE/tests,
#                      the service started against its database (PostgreSQL
#                      at 127.0.0.1:5432 or SHOPFAST_TEST_PG_URL) and a registry
#   contract-check     protocheck: the protos of proto/shopfast/SERVICE/ (and
#                      the shopfast packages they import) against the base branch's
#   package            docker build of the Dockerfile, tagged SERVICE:<sha>,
#                      SERVICE:build-<N>, SERVICE:v<version>, SERVICE:<ENVIRONMENT>-latest
#
#   scripts/pipeline.sh SERVICE        (`python3 scripts/pipelines.py targets` lists them)
#
# Environment:
#   PIPELINE_STAGES=a,b   only these stages (the others show as "not selected")
#   PIPELINE_DRY_RUN=1    show each stage's commands without running them
#   CONTRACT_BASE=REF     the contract check's base (default main, else origin/main)
#   BUILD_NUMBER=N        the build-<N> tag (default: a counter in target/pipeline/)
#   ENVIRONMENT=NAME      the <NAME>-latest tag (default dev)
#   REQUIRE_PACKAGE=1     fail instead of skipping when docker or the Dockerfile is missing
#   DOCKER_BUILD_ARGS=…   more `docker build` arguments
#   PACKAGE_FROM_HOST=1   package the release binary built on this host instead of the
#                         Dockerfile's Rust builder stage (no registry: scripts/build-images.sh,
#                         the same final stage)
set -euo pipefail
cd "$(dirname "$0")/.."

STAGES=(build unit-tests integration-tests contract-check package)

service=${1:-}
if [ -z "$service" ] || [ "$service" = -h ] || [ "$service" = --help ]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  exit 2
fi
# CRATE_DIR CRATE_VERSION HAS_LIB HAS_BIN TEST_TARGETS PROTO_PACKAGES IMAGE_CRATE,
# from `cargo metadata` (refuses a name that is not a pipeline).
facts=$(python3 scripts/pipelines.py info "$service") || exit 2
eval "$facts"

selected=",${PIPELINE_STAGES:-$(IFS=,; echo "${STAGES[*]}")},"
for stage in ${PIPELINE_STAGES:+${PIPELINE_STAGES//,/ }}; do
  [[ " ${STAGES[*]} " == *" $stage "* ]] || { echo "pipeline: unknown stage $stage (${STAGES[*]})" >&2; exit 2; }
done

cargo_flags=()
# CI builds exactly the committed lock file.
if [ "${CI:-}" = true ]; then cargo_flags+=(--locked); fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A result took note
pipeline_start=$SECONDS

# A command, shown, then run (only shown in a dry run).
run() {
  printf '   $'
  printf ' %q' "$@"
  printf '\n'
  if [ -z "${PIPELINE_DRY_RUN:-}" ]; then "$@"; fi
}
# A stage runs in a subshell (so `set -e` holds inside it); what it tells the
# summary goes through files.
say() { echo "$*" >"$work/note"; }
skip() {
  echo skipped >"$work/status"
  say "$*"
  printf '   skipped: %s\n' "$*"
}

stage_build() {
  run cargo build "${cargo_flags[@]}" -p "$service"
}

stage_unit_tests() {
  local targets=()
  if [ -n "$HAS_LIB" ]; then targets+=(--lib); fi
  if [ -n "$HAS_BIN" ]; then targets+=(--bins); fi
  if [ ${#targets[@]} -eq 0 ]; then
    skip "no library or binary target"
    return 0
  fi
  run cargo test "${cargo_flags[@]}" -p "$service" "${targets[@]}"
}

stage_integration_tests() {
  if [ -z "$TEST_TARGETS" ]; then
    skip "no integration tests ($CRATE_DIR/tests is empty or absent)"
    return 0
  fi
  if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432 && [ -z "${SHOPFAST_TEST_PG_URL:-}" ]; then
    echo "   note: no PostgreSQL at 127.0.0.1:5432: its tests skip, or fail with CI=true"
  fi
  say "tests/: $TEST_TARGETS"
  # `--test '*'` runs the tests/ targets only; `--tests` would run the unit tests again.
  run cargo test "${cargo_flags[@]}" -p "$service" --test '*'
}

contract_base() {
  local base=${CONTRACT_BASE:-}
  # A push that created its branch has no "before" commit (all zeros).
  if [[ "$base" =~ ^0*$ ]]; then
    base=""
    for candidate in main origin/main; do
      if git rev-parse --verify -q "$candidate^{commit}" >/dev/null; then
        base=$candidate
        break
      fi
    done
  fi
  if [ -z "$base" ]; then
    echo "contract-check: no base to compare with: set CONTRACT_BASE (there is no main or origin/main)" >&2
    return 1
  fi
  if ! git rev-parse --verify -q "$base^{commit}" >/dev/null; then
    echo "contract-check: CONTRACT_BASE=$base is not a commit here (fetch it, e.g. actions/checkout with fetch-depth: 0)" >&2
    return 1
  fi
  echo "$base"
}

stage_contract_check() {
  if [ -z "$PROTO_PACKAGES" ]; then
    skip "no protos (no proto/shopfast/$service/)"
    return 0
  fi
  local base old="$work/base" packages=()
  base=$(contract_base)
  if ! git cat-file -e "$base:proto" 2>/dev/null; then
    skip "no proto/ at $base: nothing to break"
    return 0
  fi
  # The base's tree, as committed, beside the working tree's proto/.
  mkdir -p "$old"
  printf '   $ git archive %s proto | tar -x -C %s\n' "$base" "$old"
  git archive "$base" proto | tar -x -C "$old"
  for package in $PROTO_PACKAGES; do packages+=(--package "$package"); done
  run cargo run "${cargo_flags[@]}" -q -p protocheck -- --old "$old/proto" --new proto "${packages[@]}"
  say "against $base: $PROTO_PACKAGES"
}

# BUILD_NUMBER, else the next of a local counter.
build_number() {
  if [ -n "${BUILD_NUMBER:-}" ]; then
    echo "$BUILD_NUMBER"
    return 0
  fi
  mkdir -p target/pipeline
  local file=target/pipeline/build-number
  (
    flock 9
    local n
    n=$(($(cat "$file" 2>/dev/null || echo 0) + 1))
    echo "$n" >"$file"
    echo "$n"
  ) 9>"$file.lock"
}

stage_package() {
  if [ -z "$IMAGE_CRATE" ]; then
    skip "$service is not in the image (the Dockerfile ships the shopfast binary)"
    return 0
  fi
  local dockerfile=Dockerfile missing=""
  if [ ! -f "$dockerfile" ]; then
    missing="no $dockerfile"
  elif ! command -v docker >/dev/null; then
    missing="docker is not installed"
  elif [ -z "${PIPELINE_DRY_RUN:-}" ] && ! docker info >/dev/null 2>&1; then
    missing="the docker daemon does not answer"
  fi
  if [ -n "$missing" ]; then
    if [ "${REQUIRE_PACKAGE:-}" = 1 ]; then
      say "$missing (REQUIRE_PACKAGE=1)"
      echo "package: $missing (REQUIRE_PACKAGE=1)" >&2
      return 1
    fi
    skip "$missing (REQUIRE_PACKAGE=1 makes this a failure)"
    return 0
  fi
  local sha tags=() tag_args=() extra=()
  sha=$(git rev-parse --short=7 HEAD)
  # An image of uncommitted changes must not pass for the commit's.
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then sha="$sha-dirty"; fi
  tags=("$service:$sha" "$service:build-$(build_number)" "$service:v$CRATE_VERSION" "$service:${ENVIRONMENT:-dev}-latest")
  for tag in "${tags[@]}"; do tag_args+=(-t "$tag"); done
  read -ra extra <<<"${DOCKER_BUILD_ARGS:-}"
  # One multi-call image (the shopfast binary): each service's pipeline
  # tags it under the service's name.
  if [ "${PACKAGE_FROM_HOST:-}" = 1 ]; then
    run env BUILD_NUMBER="$(build_number)" ENVIRONMENT="${ENVIRONMENT:-dev}" scripts/build-images.sh
    for tag in "${tags[@]}"; do run docker tag "shopfast:v$CRATE_VERSION" "$tag"; done
    say "${tags[*]}"
    return 0
  fi
  run docker build -f "$dockerfile" --build-arg "VERSION=$CRATE_VERSION" \
    --build-arg "REVISION=$(git rev-parse HEAD)" "${extra[@]}" "${tag_args[@]}" .
  say "${tags[*]}"
}

summary() {
  printf '\n== pipeline %s: summary\n' "$service"
  printf '%-18s %-12s %6s  %s\n' stage result time note
  local row t
  for row in "${STAGES[@]}"; do
    t=${took[$row]:-}
    printf '%-18s %-12s %6s  %s\n' "$row" "${result[$row]:-not run}" "${t:+${t}s}" "${note[$row]:-}"
  done
  printf '%-18s %-12s %6s\n' total "" "$((SECONDS - pipeline_start))s"
}

run_stage() {
  local stage=$1 start rc
  if [[ "$selected" != *",$stage,"* ]]; then
    result[$stage]="not selected"
    return 0
  fi
  printf '\n== stage %s (%s)\n' "$stage" "$service"
  : >"$work/status"
  : >"$work/note"
  start=$SECONDS
  set +e
  (
    set -e
    "stage_${stage//-/_}"
  )
  rc=$?
  set -e
  took[$stage]=$((SECONDS - start))
  note[$stage]=$(cat "$work/note")
  printf '== stage %s took %ds\n' "$stage" "${took[$stage]}"
  if [ "$rc" -ne 0 ]; then
    result[$stage]=FAILED
    note[$stage]=${note[$stage]:-see its output above}
    summary
    printf '\n== pipeline %s FAILED at stage %s (exit %d)\n' "$service" "$stage" "$rc"
    exit 1
  fi
  if [ -s "$work/status" ]; then
    result[$stage]=$(cat "$work/status")
  elif [ -n "${PIPELINE_DRY_RUN:-}" ]; then
    result[$stage]="shown"
  else
    result[$stage]=passed
  fi
}

if [ -n "${PIPELINE_DRY_RUN:-}" ]; then echo "== pipeline $service: dry run (commands shown, not run)"; fi
for stage in "${STAGES[@]}"; do run_stage "$stage"; done
summary
printf '\n== pipeline %s passed in %ds\n' "$service" "$((SECONDS - pipeline_start))"
