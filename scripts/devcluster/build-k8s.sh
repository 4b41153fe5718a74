#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
# (and kubectl, for humans) from the k8s.io/kubernetes Go module at a pinned release.
#
# k8s.io/kubernetes's go.mod points every k8s.io/* staging module at ./staging/src/...,
# which `go build` ignores for a dependency. So we build through a tiny wrapper module
# whose `replace` lines pin each staging module to the matching v0.<minor>.<patch> tag.
#
# usage: build-k8s.sh <version e.g. v1.33.13> <outdir>
set -euo pipefail
ver=${1:?version}; out=${2:?outdir}
stage=v0.${ver#v1.}
work=$(mktemp -d "${TMPDIR:-/tmp}/k8sbuild.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# The list of staging modules comes from the release's own go.mod.
go mod download -json "k8s.io/kubernetes@$ver" >dl.json
gomod=$(python3 -c 'import json,sys; print(json.load(open("dl.json"))["GoMod"])')
staging=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod")
goline=$(sed -n 's/^go \(.*\)/\1/p' "$gomod")
godebug=$(sed -n 's/^godebug \(.*\)/\1/p' "$gomod")

{
  echo "module streamjob.local/k8sbuild"
  echo
  echo "go $goline"
  [ -n "$godebug" ] && echo "godebug $godebug"
  echo
  echo "require k8s.io/kubernetes $ver"
  echo
  echo "replace ("
  for m in $staging; do echo "	$m => $m $stage"; done
  echo ")"
} >go.mod

cmds="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
{
  echo "//go:build tools"
  echo
  echo "package tools"
  echo
  echo "import ("
  for c in $cmds; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
  echo ")"
} >tools.go

# Seed go.sum/require lines from the release's own go.mod so versions match upstream exactly.
GOFLAGS=-mod=mod go mod tidy

pkg=k8s.io/component-base/version
cpkg=k8s.io/client-go/pkg/version
minor=${ver#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in $pkg $cpkg; do
  ld="$ld -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

mkdir -p "$out.tmp"
pkgs=""; for c in $cmds; do pkgs="$pkgs k8s.io/kubernetes/cmd/$c"; done
# shellcheck disable=SC2086
CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "$ld" -o "$out.tmp/" $pkgs
rm -rf "$out"; mv "$out.tmp" "$out"
echo "built: $(ls "$out" | tr '\n' ' ') in $out"
