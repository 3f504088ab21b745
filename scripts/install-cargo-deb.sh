#!/usr/bin/env bash
# Installs cargo-deb (crates.io), which builds the Debian package from Cargo.toml's
# [package.metadata.deb], into a cache folder and prints the path of its binary on stdout.
# The deploy test builds the package with it. Idempotent: a second run only prints the path.
#
#   TICKETGATE_CACHE  where to install (default: ~/.cache/ticketgate)
set -euo pipefail

cache="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}"
root="$cache/cargo-deb"
version="3.8.0"

if [ "$("$root/bin/cargo-deb" --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  echo "install-cargo-deb: cargo install cargo-deb $version into $root" >&2
  cargo install --quiet --locked --version "$version" --root "$root" cargo-deb >&2
fi
echo "$root/bin/cargo-deb"
