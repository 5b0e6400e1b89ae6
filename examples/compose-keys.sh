#!/bin/sh
# Make the CURVE keys compose.curve.yaml mounts, with the project's image (no venv
# needed): a pair per process in keys/ ($FILLALLOC_KEYS for another directory) and the
# allow-list keys/allowed with each client's role and source names (fillsim-1 sends as
# feed-1, fillsim-2 as feed-2, aumsim as aum, positions only reads). The files end up owned
# by the image's user (uid 10001), secret ones mode 0600, as the processes in the
# containers require. Refuses to overwrite keys. Build the image first:
#
#   docker compose build && examples/compose-keys.sh
#   docker compose -f compose.yaml -f compose.curve.yaml up
set -eu
cd "$(dirname "$0")/.."
IMAGE=${FILLALLOC_IMAGE:-fillalloc:latest}
KEYS=${FILLALLOC_KEYS:-keys}
IMAGE_UID=10001
mkdir -p "$KEYS"
KEYS=$(cd "$KEYS" && pwd)
docker run --rm --user 0 --volume "$KEYS:/keys" "$IMAGE" sh -ec "
    controller keys controller --dir /keys
    controller keys positions --dir /keys --allow /keys/allowed --role positions
    controller keys aumsim --dir /keys --allow /keys/allowed --role aum --sources aum
    controller keys fillsim-1 --dir /keys --allow /keys/allowed --role fill --sources feed-1
    controller keys fillsim-2 --dir /keys --allow /keys/allowed --role fill --sources feed-2
    chown -R $IMAGE_UID:$IMAGE_UID /keys
" >&2
echo "keys made in $KEYS (owned by uid $IMAGE_UID); the allow-list in $KEYS/allowed"
