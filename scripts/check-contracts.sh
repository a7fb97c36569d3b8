#!/usr/bin/env bash
# The contract stage's own check, as CI runs it: the protos of HEAD against
# those of the base (default: HEAD's parent; CONTRACT_BASE=REF) must have no
# breaking change, and a proto with a field removed (a scratch copy of
# products.proto) must fail with a message naming the field.
#
#   scripts/check-contracts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
base=${CONTRACT_BASE:-HEAD~1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build -q -p protocheck
protocheck=target/debug/protocheck
if git rev-parse -q --verify "$base^{commit}" >/dev/null && git ls-tree -d "$base" proto >/dev/null 2>&1; then
  git archive "$base" proto | tar -x -C "$work"
  "$protocheck" --old "$work/proto" --new proto
  echo "contracts: no breaking change against $base"
  rm -rf "$work/proto"
fi
cp -r proto "$work/proto"
file="$work/proto/shopfast/products/v1/products.proto"
field=$(grep -m1 -E '^\s+string [a-z_]+ = [0-9]+;' "$file")
grep -vF "$field" "$file" > "$file.new" && mv "$file.new" "$file"
if out=$("$protocheck" --old proto --new "$work/proto" 2>&1); then
  echo "contracts: removing \"${field## }\" from products.proto was not caught" >&2
  exit 1
fi
grep -q "FIELD_NO_DELETE" <<<"$out" || { echo "contracts: unexpected failure: $out" >&2; exit 1; }
echo "contracts: removing a field is refused:"
sed 's/^/  /' <<<"$out" | head -n 4
