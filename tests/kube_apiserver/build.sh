#!/usr/bin/env bash
# Builds the e2e kube-apiserver (main.go) into a cache outside the repository, keyed by the
# Kubernetes version in go.mod and a hash of the sources, and prints the binary's path.
# Exit 3 with one line on stderr where Go or the module proxy cannot be had (make e2e-kube skips).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v go >/dev/null 2>&1; then
	echo "e2e-kube: skipped: no Go toolchain on PATH (go is needed to build kube-apiserver)" >&2
	exit 3
fi
version="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")"
sum="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
cache="${METALMEM_CACHE:-$HOME/.cache/metalmem}"
out="$cache/kube-apiserver-$version/kube-apiserver-e2e-$sum"
if [ -x "$out" ]; then
	echo "$out"
	exit 0
fi
mkdir -p "$(dirname "$out")"
export GOCACHE="${GOCACHE_E2E:-$cache/go-build}" GOFLAGS="-p=${E2E_GO_PARALLEL:-2} -buildvcs=false"
cd "$here"
# The modules first, so that an unreachable proxy is told apart from a failed build.
if ! go mod download >"$cache/kube-apiserver-$version/download.log" 2>&1; then
	echo "e2e-kube: skipped: go mod download failed (module proxy unreachable?): $(tail -n 1 "$cache/kube-apiserver-$version/download.log")" >&2
	exit 3
fi
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$(echo "${version#v}" | cut -d. -f1)"
ldflags="$ldflags -X $pkg.gitMinor=$(echo "$version" | cut -d. -f2) -X $pkg.gitTreeState=clean"
start=$(date +%s)
nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out.tmp" . >&2
mv "$out.tmp" "$out"
echo "e2e-kube: built kube-apiserver $version in $(($(date +%s) - start)) s: $out" >&2
echo "$out"
