#!/usr/bin/env bash
# Build the control plane for tests/apiserver (kube-apiserver, kube-controller-manager,
# kube-scheduler from one k8s.io/kubernetes version, and etcd) into .cache/k8s/<pins>/ (ignored
# by git).
# The directory name is the k8s.io/kubernetes version plus a hash of go.sum and this script, so a
# changed pin or flag builds afresh and an unchanged one is reused. Go's own build and module caches (~/.cache/go-build,
# ~/go/pkg/mod) make a rebuild in a fresh clone mostly link time.
# Prints the directory holding the binaries on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
kube_version="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")"
sum_hash="$(cat "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)"
out="$repo/.cache/k8s/$kube_version-$sum_hash"
kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler)
complete=1
for name in "${kube_cmds[@]}" etcd; do
  [[ -x "$out/$name" ]] || complete=0
done
if (( complete )); then
  echo "$out"
  exit 0
fi
mkdir -p "$out.tmp"
cd "$here"
minor="${kube_version#v1.}"
minor="${minor%%.*}"
# The version the server reports (Helm checks the chart's kubeVersion against it).
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
flags=(-trimpath "-ldflags=$ldflags")
for name in "${kube_cmds[@]}"; do
  start=$(date +%s)
  go build "${flags[@]}" -o "$out.tmp/$name" "k8s.io/kubernetes/cmd/$name"
  echo "built $name $kube_version in $(( $(date +%s) - start ))s" >&2
done
start=$(date +%s)
go build "${flags[@]}" -o "$out.tmp/etcd" ./etcd
echo "built etcd in $(( $(date +%s) - start ))s" >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
