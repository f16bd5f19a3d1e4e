#!/usr/bin/env bash
# Lint check (npm run lint): the generated code in packages/proto-gen (src/gen and descriptors.binpb) is exactly
# what `npm run gen` makes from proto/. It regenerates into a temporary folder with the same buf.gen.yaml and
# compares, so it never touches the working tree. Fails with the differences when a .proto changed without
# regenerating, or when the generated code was edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# buf.gen.yaml's output paths are relative to -o; the local plugin path is relative to the repo root.
npx buf generate --template buf.gen.yaml -o "$tmp"
npx buf build -o "$tmp/descriptors.binpb"

status=0
if ! diff -r "$tmp/packages/proto-gen/src/gen" packages/proto-gen/src/gen; then
  status=1
fi
if ! cmp -s "$tmp/descriptors.binpb" packages/proto-gen/descriptors.binpb; then
  echo "packages/proto-gen/descriptors.binpb differs from 'buf build' of proto/" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "packages/proto-gen does not match proto/: run 'npm run gen' and commit the result (never edit generated code)" >&2
  exit 1
fi
echo "packages/proto-gen matches proto/"
