#!/bin/sh
# Copy the models this image carries (the Bento's model store, the default model included)
# into a model store on a volume, leaving everything already there alone. Run it before the
# server whenever the volume is mounted over the image's store: a Bento names the exact
# model versions it was built with, and the server refuses to start without them.
#
#   docker run --rm -v alice-models:/home/bentoml/store alice:latest \
#       sh /home/bentoml/bento/src/deploy/seed-models.sh
#
# docker-compose.yml and the Kubernetes manifest run it for you. Argument: the mounted
# store (default /home/bentoml/store); the source is $BENTO_PATH/models.
set -eu

src="${BENTO_PATH:-/home/bentoml/bento}/models"
dst="${1:-/home/bentoml/store}"
# Copies are staged beside the store's models and renamed into place, so a server sharing the
# store never sees half a model for long; BentoML cannot list a store with a foreign folder in
# it, so the staging folder lives only while this runs (several seeders may run at once).
staging="$dst/.alice-seeding-$(uname -n)-$$"

if [ ! -d "$src" ]; then
    echo "seed-models: no model store at $src" >&2
    exit 1
fi
if [ ! -d "$dst" ] || [ ! -w "$dst" ]; then
    echo "seed-models: $dst is not a writable folder (a volume owned by uid 1034?)" >&2
    exit 1
fi

# Leftovers of a seeder that was killed.
rm -rf "$dst"/.alice-seeding-*
trap 'rm -rf "$staging"' EXIT
cd "$src"
for version in */*/; do
    version="${version%/}"
    [ -d "$version" ] || continue # the pattern matched nothing
    [ -e "$dst/$version" ] && continue
    mkdir -p "$staging" "$dst/${version%/*}"
    cp -R -p "$version" "$staging/copy"
    # -T: never move into a folder another seeder has just put there.
    if mv -T "$staging/copy" "$dst/$version" 2>/dev/null; then
        echo "seed-models: added $version"
    elif [ ! -f "$dst/$version/model.yaml" ]; then
        echo "seed-models: could not add $version to $dst" >&2
        exit 1
    fi
    rm -rf "$staging/copy"
done
# A model that is new to the store also needs its "latest" pointer.
for latest in */latest; do
    [ -f "$latest" ] || continue
    [ -e "$dst/$latest" ] || cp -p "$latest" "$dst/$latest"
done
rm -rf "$staging"
echo "seed-models: $dst holds $(find "$dst" -mindepth 2 -maxdepth 2 -type d | wc -l) model version(s)"
