#!/usr/bin/env bash
# Builds the release binary and packs it for Linux: a tarball and a .deb, in dist/out/.
#   dist/build-linux-package.sh            # CPU build
#   FEATURES=cuda dist/build-linux-package.sh   # CUDA build (see dist/README.md)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
target_dir=${CARGO_TARGET_DIR:-$root/target}
cargo build --release ${FEATURES:+--features "$FEATURES"}
bin="$target_dir/release/flamingo"
suffix=${FEATURES:+-$FEATURES}
out="$root/dist/out"; rm -rf "$out"; mkdir -p "$out"

# Tarball: bin/, share/applications, share/icons.
stage="$out/flamingo-$version-linux-x86_64$suffix"
install -Dm755 "$bin" "$stage/bin/flamingo"
install -Dm644 dist/linux/flamingo.desktop "$stage/share/applications/flamingo.desktop"
install -Dm644 dist/linux/flamingo.png "$stage/share/icons/hicolor/256x256/apps/flamingo.png"
install -Dm644 README.md "$stage/share/doc/flamingo/README.md"
install -Dm644 assets/README.md "$stage/share/doc/flamingo/ASSETS.md"
tar -C "$out" -czf "$stage.tar.gz" "$(basename "$stage")"

# .deb from the same tree under /usr.
deb="$out/deb"
mkdir -p "$deb/DEBIAN" "$deb/usr"
cp -r "$stage/bin" "$stage/share" "$deb/usr/"
cat > "$deb/DEBIAN/control" <<CONTROL
Package: flamingo${suffix}
Version: $version
Architecture: amd64
Maintainer: Flamingo developers
Depends: libc6, libgl1, libxkbcommon-x11-0
Description: Few-shot image captioning and VQA with OpenFlamingo
 Drag in example images with captions, drop a query image and watch its caption stream in.
CONTROL
dpkg-deb --build --root-owner-group "$deb" "$out/flamingo${suffix}_${version}_amd64.deb" >/dev/null
rm -rf "$deb"
ls -la "$out"
