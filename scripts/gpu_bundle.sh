#!/usr/bin/env bash
# Prepare what a borrowed GPU machine lacks, into the git-ignored folder .gpu-bundle/:
#   wheels/   cp312 manylinux wheels of hydra-core, omegaconf, antlr4 (built here: it has no wheel), wandb and what they need
#   cifar10-jpeg.tar.gz   the JPEG copy of CIFAR-10 (the machine has no network)
#   reference/   airbench94's published code and its runner (../shared/reference): scripts/gpu_loan.sh's instrument, not ours
# Usage: bash scripts/gpu_bundle.sh [path to cifar10-jpeg.tar.gz]   then see scripts/gpu_loan.sh (or gpu_study.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
TARBALL=${1:-../shared/data/cifar10-jpeg.tar.gz}
BUNDLE=.gpu-bundle
# The versions tested here; the machine's own torch, numpy, rich, matplotlib, psutil and joblib are used as they are.
PACKAGES=(hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0 wandb==0.31.0)
ANTLR=antlr4-python3-runtime==4.9.3  # hydra-core 1.3 pins 4.9.*, published as a source package only
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any)

[ -f "$TARBALL" ] || { echo "gpu_bundle: no data tarball at $TARBALL: pass its path as the first argument" >&2; exit 2; }
rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels" "$BUNDLE/build"
python -m pip wheel -q --no-deps "$ANTLR" -w "$BUNDLE/build"
python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    $(printf -- '--platform %s ' "${PLATFORMS[@]}") --find-links "$BUNDLE/build" -d "$BUNDLE/wheels" "${PACKAGES[@]}"
rm -rf "$BUNDLE/build"
cp "$TARBALL" "$BUNDLE/cifar10-jpeg.tar.gz"
REFERENCE=$(dirname "$TARBALL")/../reference
[ -d "$REFERENCE" ] && mkdir -p "$BUNDLE/reference" && cp "$REFERENCE"/airbench94.py "$REFERENCE"/airbench_ref.py "$REFERENCE"/LICENSE.airbench "$BUNDLE/reference/"
echo "gpu_bundle: $(ls "$BUNDLE/wheels" | wc -l) wheels, $(du -sh "$BUNDLE/wheels" | cut -f1); data $(du -sh "$BUNDLE/cifar10-jpeg.tar.gz" | cut -f1); all $(du -sh "$BUNDLE" | cut -f1)"
