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
sed -i "s/$old/$new/g" "$vectors"
echo "script $old -> $new"
