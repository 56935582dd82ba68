#!/usr/bin/env bash
# Apply patches/NNNN-*.patch to nnUNet/ in order, idempotently.
#   - already applied (reverse applies cleanly): skipped
#   - applies cleanly: applied
#   - neither: stop with an error naming the patch
# `git --git-dir=/dev/null apply` treats nnUNet/ as a plain tree, so this works the same whether
# nnUNet/ is an initialised submodule or was filled from the PyPI sdist.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
patches=(patches/[0-9][0-9][0-9][0-9]-*.patch)
[ ${#patches[@]} -gt 0 ] || { echo "ERROR: no patches found in patches/" >&2; exit 1; }
gitapply() { (cd nnUNet && git --git-dir=/dev/null apply "$@"); }
for p in "${patches[@]}"; do
    abs="$PWD/$p"
    if gitapply --reverse --check "$abs" 2>/dev/null; then
        echo "   patch already applied: $p"
    elif gitapply --check "$abs" 2>/dev/null; then
        gitapply "$abs"
        echo "   patch applied:         $p"
    else
        echo "ERROR: patch $p does not apply to nnUNet/ (is nnUNet/ the pinned v1.6.6?)" >&2
        gitapply --check "$abs" || true
        exit 1
    fi
done
