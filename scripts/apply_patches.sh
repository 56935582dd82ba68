#!/usr/bin/env bash
# Apply the series patches/NNNN-*.patch to an nnU-Net tree (default: nnUNet/) in order, idempotently.
#   usage: apply_patches.sh [NNUNET_DIR]
#   - finds how many patches of the series are applied already (a prefix of it: the patches are always
#     applied in order): the largest k such that reversing patches k..1, in that order, works on a copy of
#     the files the series touches (a later patch may change the context of an earlier one, so patches
#     cannot be checked one by one);
#   - applies the others in order; a patch that does not apply stops setup with an error naming it.
# `git --git-dir=/dev/null apply` treats nnUNet/ as a plain tree, so this works the same whether
# nnUNet/ is an initialised submodule or was filled from the PyPI sdist.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=$(cd "${1:-$repo/nnUNet}" && pwd)
shopt -s nullglob
patch_dir=${PATCHES_DIR:-$repo/patches}  # PATCHES_DIR: for tests
patches=("$patch_dir"/[0-9][0-9][0-9][0-9]-*.patch)
[ ${#patches[@]} -gt 0 ] || { echo "ERROR: no patches found in $patch_dir" >&2; exit 1; }
gitapply() { local dir=$1; shift; (cd "$dir" && git --git-dir=/dev/null apply "$@"); }
mapfile -t touched < <(sed -n 's|^+++ b/||p' "${patches[@]}" | sort -u)

# reversing patches k..1 in order works on a copy of the touched files
reverses_cleanly() {
    local k=$1 scratch ok=0 i f
    scratch=$(mktemp -d)
    for f in "${touched[@]}"; do
        if [ -e "$target/$f" ]; then mkdir -p "$scratch/$(dirname "$f")" && cp "$target/$f" "$scratch/$f"; fi
    done
    for ((i = k - 1; i >= 0; i--)); do
        gitapply "$scratch" --reverse "${patches[$i]}" 2>/dev/null || { ok=1; break; }
    done
    rm -rf "$scratch"
    return $ok
}

applied=0
for ((k = ${#patches[@]}; k > 0; k--)); do
    if reverses_cleanly "$k"; then applied=$k; break; fi
done
for ((i = applied; i < ${#patches[@]}; i++)); do
    p=patches/$(basename "${patches[$i]}")
    if gitapply "$target" --check "${patches[$i]}" 2>/dev/null; then
        gitapply "$target" "${patches[$i]}"
        echo "   patch applied:         $p"
    else
        echo "ERROR: patch $p does not apply to $target (is it the pinned nnU-Net v1.6.6?)" >&2
        gitapply "$target" --check "${patches[$i]}" || true
        exit 1
    fi
done
[ "$applied" -eq 0 ] || echo "   patches: $applied of ${#patches[@]} already applied"
