#!/usr/bin/env bash
# Apply patches/NNNN-*.patch to an nnU-Net tree (default: nnUNet/) in order, idempotently.
#   usage: apply_patches.sh [NNUNET_DIR]
#   - already applied (reverse applies cleanly): skipped
#   - applies cleanly: applied
#   - neither: stop with an error naming the patch
# `git --git-dir=/dev/null apply` treats nnUNet/ as a plain tree, so this works the same whether
# nnUNet/ is an initialised submodule or was filled from the PyPI sdist.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=$(cd "${1:-$repo/nnUNet}" && pwd)
shopt -s nullglob
patch_dir=${PATCHES_DIR:-$repo/patches}  # PATCHES_DIR: for tests
patches=("$patch_dir"/[0-9][0-9][0-9][0-9]-*.patch)
[ ${#patches[@]} -gt 0 ] || { echo "ERROR: no patches found in $patch_dir" >&2; exit 1; }
gitapply() { (cd "$target" && git --git-dir=/dev/null apply "$@"); }
already=0
for abs in "${patches[@]}"; do
    p=patches/$(basename "$abs")
    if gitapply --reverse --check "$abs" 2>/dev/null; then
        already=$((already + 1))
    elif gitapply --check "$abs" 2>/dev/null; then
        gitapply "$abs"
        echo "   patch applied:         $p"
    else
        echo "ERROR: patch $p does not apply to $target (is it the pinned nnU-Net v1.6.6?)" >&2
        gitapply --check "$abs" || true
        exit 1
    fi
done
[ "$already" -eq 0 ] || echo "   patches: $already of ${#patches[@]} already applied"
