#!/usr/bin/env bash
# The demo: builds and installs walarch_ext, starts a throwaway cluster that
# archives through it, writes real WAL with pgbench, switches, waits for the
# archive to catch up, shows pg_stat_archiver and the archive, checks every
# archived file against its source in pg_wal; then takes a base backup into
# the same archive, loses the server (its data directory deleted), restores
# it with one command and checks that every committed row is back; stops
# and cleans up.
# PostgreSQL version: WALARCH_DEMO_PG (15, 16, 17 or 18; default 15).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
bash scripts/setup.sh

V=${WALARCH_DEMO_PG:-15}
case "$V" in 15|16|17|18) ;; *) echo "WALARCH_DEMO_PG must be 15, 16, 17 or 18" >&2; exit 2 ;; esac
BIN=$(pg_bindir "$V")
echo "==> building and installing walarch_ext (release) into PostgreSQL $V, and the walarch command"
cargo pgrx install --release --pg-config "$BIN/pg_config" >/dev/null
cargo build --release -q -p walarch-cli
install -m 0755 target/release/walarch /usr/local/bin/walarch

DEMO=$(mktemp -d /tmp/walarch-demo.XXXXXX)
PORT=5499
chmod 755 "$DEMO"
mkdir "$DEMO/archive" "$DEMO/sock"
chown -R postgres: "$DEMO"
as_pg() { runuser -u postgres -- "$@"; }
sql() { as_pg "$BIN/psql" -X -h "$DEMO/sock" -p $PORT -U postgres -d postgres "$@"; }
cleanup() {
  as_pg "$BIN/pg_ctl" -D "$DEMO/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$DEMO"
}
trap cleanup EXIT

echo "==> initdb and start a throwaway cluster in $DEMO"
as_pg "$BIN/initdb" -D "$DEMO/data" -U postgres --auth=trust --no-sync >/dev/null
cat >> "$DEMO/data/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$DEMO/sock'
shared_preload_libraries = 'walarch_ext'
archive_mode = on
archive_library = 'walarch_ext'
walarch.archive_directory = '$DEMO/archive'
# keep every segment in pg_wal for the comparison below
max_wal_size = '4GB'
checkpoint_timeout = '1h'
CONF
as_pg "$BIN/pg_ctl" -D "$DEMO/data" -l "$DEMO/server.log" -w start >/dev/null
sql -Atqc "SELECT 'PostgreSQL ' || current_setting('server_version') || ', archive_library = ' || current_setting('archive_library')"
sql -qc "CREATE EXTENSION walarch_ext"

echo "==> writing WAL: pgbench -i -s 10, then 10 s of pgbench"
as_pg "$BIN/pgbench" -h "$DEMO/sock" -p $PORT -U postgres -i -s 10 -q postgres 2>&1 | tail -1
as_pg "$BIN/pgbench" -h "$DEMO/sock" -p $PORT -U postgres -c 2 -T 10 postgres 2>/dev/null | grep -E '^tps'
echo "==> walarch_switch_wal(wait => true): switch, and wait until the file is archived"
sql -c "SELECT * FROM walarch_switch_wal(wait => true, timeout => '120s')"
for _ in $(seq 1 240); do
  ls "$DEMO/data/pg_wal/archive_status/" | grep -q '\.ready$' || break
  sleep 0.5
done
if ls "$DEMO/data/pg_wal/archive_status/" | grep -q '\.ready$'; then
  echo "archiving did not finish; server log:" >&2; tail -20 "$DEMO/server.log" >&2; exit 1
fi

echo "==> walarch_stats(): pg_stat_archiver's columns, then what it lacks"
sql -xc "SELECT * FROM walarch_stats()"
echo "==> pg_stat_archiver, for comparison"
sql -xc "SELECT * FROM pg_stat_archiver"
echo "==> archive directory ($DEMO/archive)"
ls -l "$DEMO/archive" | head -8; echo "   ... $(ls "$DEMO/archive" | wc -l) files in all"
echo "==> walarch verify (checksums, gaps)"
walarch verify "$DEMO/archive"
echo "==> sha256sum -c, with standard tools"
( cd "$DEMO/archive" && sha256sum -c --quiet ./*.sha256 && echo "all $(ls ./*.sha256 | wc -l) checksums OK" )

echo "==> checking every archived file against pg_wal"
n=0; bad=0
for f in "$DEMO/archive"/*; do
  name=$(basename "$f")
  case "$name" in *.sha256) continue ;; esac
  if cmp -s "$f" "$DEMO/data/pg_wal/$name"; then n=$((n + 1)); else echo "MISMATCH: $name"; bad=$((bad + 1)); fi
done
if [ "$bad" -ne 0 ] || [ "$n" -eq 0 ]; then echo "==> FAILED: $bad of $((n + bad)) archived files differ from pg_wal" >&2; exit 1; fi
if grep -E 'WARNING|FATAL' "$DEMO/server.log"; then echo "==> FAILED: warnings in the server log" >&2; exit 1; fi
echo "==> OK: $n files archived by walarch_ext, all byte-identical to their source in pg_wal"

echo "==> a base backup into the archive: pg_basebackup --target=walarch:demo -X none"
as_pg "$BIN/pg_basebackup" -h "$DEMO/sock" -p $PORT -U postgres --target=walarch:demo -X none -c fast
as_pg "$BIN/pgbench" -h "$DEMO/sock" -p $PORT -U postgres -c 2 -T 3 postgres >/dev/null 2>&1
sql -qc "CREATE TABLE after_the_backup AS SELECT g FROM generate_series(1, 1000) g"
rows() { sql -Atc "SELECT (SELECT count(*) FROM pgbench_history) || ' pgbench_history rows, ' || (SELECT count(*) FROM after_the_backup) || ' rows written after the backup'"; }
before=$(rows)
sql -qAtc "SELECT 'switched and archived ' || walfile FROM walarch_switch_wal(wait => true, timeout => '120s') WHERE archived"
echo "==> walarch backup list"
walarch backup list "$DEMO/archive"
echo "==> the server is lost: stopped at once, its data directory deleted ($before)"
as_pg "$BIN/pg_ctl" -D "$DEMO/data" -m immediate -w stop >/dev/null
rm -rf "$DEMO/data"
echo "==> walarch backup restore ARCHIVE latest PGDATA (as postgres), then start"
as_pg walarch backup restore "$DEMO/archive" latest "$DEMO/data" --jobs 2
as_pg "$BIN/pg_ctl" -D "$DEMO/data" -l "$DEMO/restored.log" -w start >/dev/null
for _ in $(seq 1 120); do
  [ "$(sql -Atc 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break
  sleep 0.5
done
after=$(rows)
echo "   restored: $after"
if [ "$after" != "$before" ]; then echo "==> FAILED: restored \"$after\", want \"$before\"" >&2; tail -20 "$DEMO/restored.log" >&2; exit 1; fi
if grep -E 'WARNING|FATAL' "$DEMO/restored.log"; then echo "==> FAILED: warnings in the restored server's log" >&2; exit 1; fi
echo "==> OK: the lost server was restored from the archive with every committed row"
