#!/usr/bin/env bash
# sync-wireguard.sh rebuilds third_party/wireguard — our fork of
# golang.zx2c4.com/wireguard, which go.mod replaces — from upstream at the
# version go.mod requires plus the patches in third_party/wireguard-patches,
# applied in order. With --check it changes nothing and fails unless the
# tree is exactly that, so the fork cannot drift from its patches (make
# test runs it).
#
#   bash third_party/sync-wireguard.sh [--check]
#
# To follow upstream: set the new version in go.mod's require line, run
# this; if a patch no longer applies, rebase it in a git clone of the
# upstream tree (git am, fix, git format-patch) and run this again.
set -euo pipefail
cd "$(dirname "$0")/.."
go=${GO:-go}
check=
[ "${1:-}" = --check ] && check=1

module=golang.zx2c4.com/wireguard
version=$(awk -v m=$module '$1 == m && $2 ~ /^v/ {print $2; exit}' go.mod)
[ -n "$version" ] || { echo "go.mod does not require $module" >&2; exit 1; }

work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
# Downloaded outside our module: go.mod replaces this one, and go.sum need
# not hold its sum (the checksum database is asked instead).
src=$(cd "$work" && GOFLAGS= $go mod download -json "$module@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$src" ] || { echo "could not download $module@$version" >&2; exit 1; }
cp -r "$src" "$work/tree"
chmod -R u+w "$work/tree"
for p in third_party/wireguard-patches/*.patch; do
	patch -s -d "$work/tree" -p1 --no-backup-if-mismatch <"$p" || {
		echo "$p does not apply to $module@$version: rebase it (see the top of $0)" >&2
		exit 1
	}
done

if [ -n "$check" ]; then
	if ! diff -r "$work/tree" third_party/wireguard >"$work/diff"; then
		cat "$work/diff" >&2
		echo "third_party/wireguard is not $module@$version with third_party/wireguard-patches: change the patches, not the tree, and run bash $0" >&2
		exit 1
	fi
	echo "third_party/wireguard is $module@$version with $(ls third_party/wireguard-patches/*.patch | wc -l) patches"
	exit 0
fi
rm -rf third_party/wireguard
cp -r "$work/tree" third_party/wireguard
echo "third_party/wireguard is now $module@$version with $(ls third_party/wireguard-patches/*.patch | wc -l) patches"
