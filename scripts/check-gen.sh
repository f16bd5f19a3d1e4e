#!/usr/bin/env bash
# CI check: proto/ lints clean, and the committed generated code (packages/proto-gen/src/gen and
# descriptors.binpb) is exactly what `npm run gen` makes from proto/. Fails with the diff when a
# .proto changed without regenerating, or the generated code was edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

npx buf lint
npm run gen --silent

status=0
git diff --exit-code -- packages/proto-gen || status=1
untracked=$(git ls-files --others --exclude-standard -- packages/proto-gen)
if [ -n "$untracked" ]; then
  echo "generated files not committed:" >&2
  echo "$untracked" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "packages/proto-gen is stale: run 'npm run gen' and commit the result" >&2
fi
exit "$status"
