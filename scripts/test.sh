#!/usr/bin/env bash
# Runs every test of walarch_ext on a fresh or prepared machine (as root):
#   0. lint: rustfmt and clippy (warnings are errors);
#   1. unit tests of the server-independent crate (walarch-core) and of the
#      walarch command (walarch-cli), which is installed to /usr/local/bin;
#   2. `cargo pgrx test` (#[pg_test]s inside a live server) on each version;
#   3. the integration tests (tests/) on hand-started clusters, each version,
#      against the regular (non-test) build of the module.
# Versions: WALARCH_PG_VERSIONS (default "15 16 17 18").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
bash scripts/setup.sh

VERSIONS=${WALARCH_PG_VERSIONS:-"15 16 17 18"}
PGDATA_ROOT=${WALARCH_PGTEST_PGDATA:-/tmp/walarch-pgdata}
install -d -o postgres -g postgres "$PGDATA_ROOT"
start=$(date +%s)

echo "==> lint: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "==> unit tests (walarch-core), the walarch command and the benchmark's proxy"
cargo test -p walarch-core -p walarch-cli -p rtt-proxy
echo "==> the S3 destination against a real SeaweedFS store"
cargo test -p walarch-s3
# restore_command in the integration tests runs it as the postgres user.
cargo build --release -p walarch-cli
install -m 0755 target/release/walarch /usr/local/bin/walarch

for v in $VERSIONS; do
  echo "==> PostgreSQL $v: cargo pgrx test"
  cargo pgrx test "pg$v" --runas postgres --pgdata "$PGDATA_ROOT"
  echo "==> PostgreSQL $v: install the module, integration tests"
  cargo pgrx install --pg-config "$(pg_bindir "$v")/pg_config" >/dev/null
  # Most of a test's time is spent waiting on the server: 4 at a time.
  WALARCH_TEST_PG=$v cargo test -p walarch-integration -- --test-threads 4
done
echo "==> all tests passed on PostgreSQL $VERSIONS in $(( $(date +%s) - start )) s"
