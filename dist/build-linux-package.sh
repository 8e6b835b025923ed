#!/usr/bin/env bash
# Linux packages in dist/out/: the .deb (and the AppImage where GitHub is reachable: its
# runtime is downloaded) by cargo-packager as configured in Cargo.toml, and a tarball.
#   dist/build-linux-package.sh                  # CPU build
#   FEATURES=cuda dist/build-linux-package.sh    # CUDA build (see dist/README.md)
# cargo-packager 0.11 writes no Recommends: the file dialogs' back-ends (an xdg portal or
# zenity; without them the app offers a typed path) are added to the .deb's control here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo-packager >/dev/null || cargo install cargo-packager --locked
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
target_dir=${CARGO_TARGET_DIR:-$root/target}
suffix=${FEATURES:+-$FEATURES}
out="$root/dist/out"; rm -rf "$out"; mkdir -p "$out"
cargo build --release ${FEATURES:+--features "$FEATURES"}
formats=deb
if [ -z "${NO_APPIMAGE:-}" ] && curl -fsI https://github.com >/dev/null 2>&1; then formats=deb,appimage; fi
cargo packager --release --formats "$formats" --out-dir "$out" ${FEATURES:+-- --features "$FEATURES"}

# The .deb: add Recommends (and the CUDA suffix to the package name).
deb=$(ls "$out"/*.deb)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
dpkg-deb -R "$deb" "$work/pkg"
sed -i "s/^Package: flamingo$/Package: flamingo${suffix}/" "$work/pkg/DEBIAN/control"
sed -i '/^Depends:/a Recommends: xdg-desktop-portal-gtk | zenity' "$work/pkg/DEBIAN/control"
rm "$deb"
dpkg-deb --build --root-owner-group "$work/pkg" "$out/flamingo${suffix}_${version}_amd64.deb" >/dev/null

# Tarball: bin/, share/applications, share/icons.
stage="$out/flamingo-$version-linux-x86_64$suffix"
install -Dm755 "$target_dir/release/flamingo" "$stage/bin/flamingo"
install -Dm644 dist/linux/flamingo.desktop "$stage/share/applications/flamingo.desktop"
install -Dm644 dist/linux/flamingo.png "$stage/share/icons/hicolor/256x256/apps/flamingo.png"
install -Dm644 README.md "$stage/share/doc/flamingo/README.md"
install -Dm644 assets/README.md "$stage/share/doc/flamingo/ASSETS.md"
tar -C "$out" -czf "$stage.tar.gz" "$(basename "$stage")"
rm -rf "$stage" "$out/.cargo-packager"
ls -la "$out"
