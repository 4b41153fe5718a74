#!/usr/bin/env bash
# Build helm from its Go module into ~/.cache/streamjob/helm-<version>/helm (once per version)
# and print its path. Used by tests/operator/test_helm.py and .ci/run.
set -euo pipefail
VERSION="${HELM_VERSION:-v3.22.0}"
DIR="${STREAMJOB_CACHE:-$HOME/.cache/streamjob}/helm-$VERSION"
if [[ ! -x "$DIR/helm" ]]; then
  mkdir -p "$DIR"
  GOBIN="$DIR" GOFLAGS=-mod=mod nice -n 10 go install "helm.sh/helm/v3/cmd/helm@$VERSION" >&2
fi
echo "$DIR/helm"
