#!/bin/sh
# Pin deploy/Dockerfile's base image (ARG PYTHON_IMAGE) to the digest its tag points at now.
#   deploy/pin-base-image.sh                               # refresh the digest of the current tag
#   deploy/pin-base-image.sh python:3.11.14-slim-bookworm  # move to another tag
# Needs `docker buildx` (or `crane`) and access to the registry. Review and commit the change.
set -eu
dockerfile="$(dirname "$0")/Dockerfile"
current=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$dockerfile")
[ -n "$current" ] || { echo "no 'ARG PYTHON_IMAGE=' line in $dockerfile" >&2; exit 1; }
tag="${1:-${current%@*}}"
if command -v docker >/dev/null 2>&1; then
  digest=$(docker buildx imagetools inspect "$tag" --format '{{.Manifest.Digest}}')
elif command -v crane >/dev/null 2>&1; then
  digest=$(crane digest "$tag")
else
  echo "needs docker (buildx) or crane" >&2; exit 1
fi
if ! printf '%s\n' "$digest" | grep -Eq '^sha256:[0-9a-f]{64}$'; then
  echo "no digest for $tag (got: $digest)" >&2; exit 1
fi
sed -i "s|^ARG PYTHON_IMAGE=.*|ARG PYTHON_IMAGE=$tag@$digest|" "$dockerfile"
echo "ARG PYTHON_IMAGE=$tag@$digest"
