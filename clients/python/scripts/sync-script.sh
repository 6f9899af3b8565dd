#!/usr/bin/env bash
# After publisher/src/publish.lua changed: ships the new script in the Python package and
# renames it (its SHA1) in the shared vectors, publisher/vectors/publish.json. Review the diff,
# then run clients/python/scripts/ci.sh.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$repo"
vectors=publisher/vectors/publish.json
old="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["script_sha1"])' "$vectors")"
new="$(sha1sum publisher/src/publish.lua | cut -c1-40)"
cp publisher/src/publish.lua clients/python/src/gateway_publisher/publish.lua
if [ "$old" = "$new" ]; then
  # The vectors already name this script (the Rust side renamed it): leave them as they are.
  echo "script $new: the vectors already name it"
  exit 0
fi
sed -i "s/$old/$new/g" "$vectors"
echo "script $old -> $new"
