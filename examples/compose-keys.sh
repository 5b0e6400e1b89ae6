#!/bin/sh
# Make the CURVE keys compose.curve.yaml mounts, with the project's own image (no venv
# needed): a pair per process in keys/ and the allow-list keys/allowed with each client's
# role and source names (fillsim-1 sends as feed-1, fillsim-2 as feed-2, aumsim as aum,
# positions only reads). The files end up owned by the image's user (uid 10001), secret
# ones mode 0600, as the processes in the containers require. Refuses to overwrite keys.
#
#   examples/compose-keys.sh                  # then:
#   docker compose -f compose.yaml -f compose.curve.yaml up
set -eu
cd "$(dirname "$0")/.."
IMAGE_UID=10001
if docker compose version >/dev/null 2>&1; then compose="docker compose"; else compose=docker-compose; fi
mkdir -p keys
$compose run --rm --no-deps --user 0 -v "$PWD/keys:/keys" controller sh -ec "
    controller keys controller --dir /keys
    controller keys positions --dir /keys --allow /keys/allowed --role positions
    controller keys aumsim --dir /keys --allow /keys/allowed --role aum --sources aum
    controller keys fillsim-1 --dir /keys --allow /keys/allowed --role fill --sources feed-1
    controller keys fillsim-2 --dir /keys --allow /keys/allowed --role fill --sources feed-2
    chown -R $IMAGE_UID:$IMAGE_UID /keys
"
echo "keys made in keys/ (owned by uid $IMAGE_UID); allow-list in keys/allowed"
