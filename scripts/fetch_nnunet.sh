#!/usr/bin/env bash
# Populate nnUNet/ with the pinned nnU-Net v1.6.6.
#
# If the git submodule is initialised (nnUNet/.git exists, e.g. after `git clone --recursive`), its
# checkout is used as it is. Otherwise (a plain clone, or a machine without GitHub access) the identical
# PyPI source release nnunet==1.6.6 is downloaded, its sha256 verified, and unpacked into nnUNet/.
set -euo pipefail

PY=${1:?usage: fetch_nnunet.sh PYTHON}
DEST=nnUNet
VERSION=1.6.6
SHA256=7d328f975c59e94eb4d987f558b8b4356d59e379d6f0a9581316fd3e73d64a3c
PIN_COMMIT=d1247c3d7653e3be5ee5cbf50f618834fad480b5

if [ -f "$DEST/setup.py" ] && [ -d "$DEST/nnunet" ]; then
    if [ -e "$DEST/.git" ]; then
        head=$(git -C "$DEST" rev-parse HEAD)
        if [ "$head" != "$PIN_COMMIT" ]; then
            echo "ERROR: nnUNet/ submodule is at $head, expected the pin $PIN_COMMIT (v$VERSION)." >&2
            echo "       Run: git submodule update nnUNet" >&2
            exit 1
        fi
    fi
    exit 0
fi

if [ -d "$DEST" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ]; then
    echo "ERROR: nnUNet/ exists but holds no nnU-Net checkout (no setup.py / nnunet/)." >&2
    echo "       Remove it or run: git submodule update --init nnUNet" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo ">> nnUNet/ is empty: fetching the PyPI source release nnunet==$VERSION"
"$PY" -m pip download --quiet --no-deps --no-binary :all: "nnunet==$VERSION" -d "$tmp"
sdist="$tmp/nnunet-$VERSION.tar.gz"
[ -f "$sdist" ] || { echo "ERROR: pip did not produce $sdist" >&2; exit 1; }
got=$(sha256sum "$sdist" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
    echo "ERROR: sha256 mismatch for nnunet-$VERSION.tar.gz: got $got, expected $SHA256" >&2
    exit 1
fi
tar -xzf "$sdist" -C "$tmp"
mkdir -p "$DEST"
# the egg-info of the sdist is build output, not source: leave it out
rm -rf "$tmp/nnunet-$VERSION/nnunet.egg-info"
cp -a "$tmp/nnunet-$VERSION/." "$DEST/"
echo ">> nnUNet/ populated from nnunet-$VERSION.tar.gz (sha256 verified)"
