#!/usr/bin/env bash
# The benchmark, in two suites:
#   local: walarch_ext against contrib basic_archive, a cp archive_command,
#          pgBackRest archive-push (sync and async) and the dd floor, into a
#          directory. Writes $WALARCH_BENCH_OUT/benchmark.md and .png.
#   s3:    walarch_ext (parallel_copies 1, 4, 16) against pgBackRest
#          archive-push to repo type s3 (sync, async 4 and 16) and the
#          store's own ceiling (parallel plain PUTs), into a SeaweedFS
#          cluster through a TLS proxy adding a round-trip time
#          (bench/rtt-proxy). Writes benchmark-s3.md, .png and .json.
#   compression: one backlog of pgbench WAL drained by walarch_ext
#          (compression off, zstd 1, zstd 3), pgBackRest async (zst 1, zst 3,
#          lz4, gz) and basic_archive into a directory and into the S3 store
#          at the first of WALARCH_BENCH_RTTS (default 20 ms here): archive
#          sizes, speed, CPU. Writes benchmark-compression.md, .png and .json.
#   recovery: a base backup plus WALARCH_BENCH_SEGMENTS segments (default 128
#          here) recovered (PostgreSQL 15) from the S3 store through the RTT
#          proxy at each of WALARCH_BENCH_RTTS: walarch restore (no prefetch,
#          prefetch 8 and 32) against pgBackRest archive-get (sync; async with
#          queue 128 MiB and 1 GiB, process-max 1 and 8); and from a local
#          directory: walarch restore (no prefetch, prefetch 8) and a cp floor.
#          Time to consistency and to the end of recovery, for each kind of
#          WAL in WALARCH_BENCH_RECOVERY_WAL (heap inserts, whose replay bounds
#          the recovery; logical decoding messages, whose replay does nothing,
#          so the recovery is fetch-bound), each with its own primary. Writes
#          benchmark-recovery.md, .png and .json.
#   backup: a pgbench database (scale WALARCH_BENCH_BACKUP_SCALE, default 135,
#          about 2 GB) backed up into a directory and into the S3 store at the
#          first of WALARCH_BENCH_RTTS (default 20 ms here) by walarch_ext's
#          base backup target (pg_basebackup --target=walarch, zstd 1 and 3)
#          and pgBackRest backup --type=full (zst 1 and 3, process-max 1 and
#          4), with pg_basebackup -Ft -z and -Ft into a local directory as
#          the floor; then restored into a fresh directory by walarch backup
#          restore --jobs 4, pgBackRest restore (process-max 1 and 4) and tar
#          (the floor). Time, CPU, stored size, peak RSS; each restored
#          cluster started and checked once. Writes benchmark-backup.md, .png
#          and .json.
#   encryption: two backlogs of WALARCH_BENCH_SEGMENTS segments (the s3
#          suite's heap inserts and the compression suite's pgbench WAL)
#          drained into the S3 store at the first of WALARCH_BENCH_RTTS
#          (default 20 ms here) by walarch_ext zstd 1 without and with
#          walarch.encryption_recipients (an age key pair made for the run),
#          pgBackRest async zst 1 without and with repo1-cipher-type=
#          aes-256-cbc, and the store's ceiling (4 parallel PUTs): drain
#          time, MiB/s, CPU per segment, and the issue's two targets checked.
#          Writes benchmark-encryption.md, .png and .json.
#
# Installs what it needs, idempotently: scripts/setup.sh, pgbackrest (apt),
# matplotlib (a venv under /var/cache/walarch/bench-venv), and the release
# builds of walarch_ext, the walarch command and rtt-proxy.
#
# Settings (environment):
#   WALARCH_BENCH_PG            PostgreSQL major version, 15-18 (default 15)
#   WALARCH_BENCH_SEGMENTS      backlog size in segments for the drain (default 64; the
#                               recovery suite: segments to recover, default 128)
#   WALARCH_BENCH_REPS          repetitions of each drain (default 3)
#   WALARCH_BENCH_LOAD_SECONDS  pgbench time per method under load (default 60; 0 skips it)
#   WALARCH_BENCH_OUT           output directory (default docs/)
#   WALARCH_BENCH_DIR           where the clusters and archives live (default /var/tmp)
#   WALARCH_BENCH_METHODS       comma-separated subset of methods (default: all)
#   WALARCH_BENCH_SUITES        any of "local s3 compression recovery backup encryption"
#                               (default: all six)
#   WALARCH_BENCH_RTTS          round-trip times of the s3 and recovery suites, ms (default
#                               0,20; the compression suite uses the first, default 20)
#   WALARCH_BENCH_WALARCH       the walarch command the recovery suite restores with
#                               (default: target/release/walarch, built here)
#   WALARCH_BENCH_RECOVERY_WAL  the recovery suite's kinds of WAL, comma-separated:
#                               heap, messages (default: heap,messages)
#   WALARCH_BENCH_BACKUP_SCALE  the backup suite's pgbench scale (default 135: about 2 GB)
#   WALARCH_BENCH_BACKUP_DESTS  the backup suite's destinations: dir, s3 or dir,s3 (default)
#   WALARCH_BENCH_SKIP_INSTALL  1: skip setup.sh and the release build, and measure
#                               the walarch_ext already installed
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench.sh: %s\n' "$*" >&2; exit 2; }

V=${WALARCH_BENCH_PG:-15}
SEGMENTS=${WALARCH_BENCH_SEGMENTS:-64}
REPS=${WALARCH_BENCH_REPS:-3}
LOAD_SECONDS=${WALARCH_BENCH_LOAD_SECONDS:-60}
OUT=${WALARCH_BENCH_OUT:-docs/}
PARENT=${WALARCH_BENCH_DIR:-/var/tmp}
case "$V" in 15|16|17|18) ;; *) die "WALARCH_BENCH_PG must be 15, 16, 17 or 18" ;; esac
for var in SEGMENTS REPS LOAD_SECONDS; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "WALARCH_BENCH_$var must be a whole number"
done
[ "$SEGMENTS" -ge 1 ] || die "WALARCH_BENCH_SEGMENTS must be at least 1"
[ "$REPS" -ge 1 ] || die "WALARCH_BENCH_REPS must be at least 1"
[ -d "$PARENT" ] || die "WALARCH_BENCH_DIR $PARENT is not a directory"
[ "$(id -u)" = 0 ] || die "run as root (the clusters run as the postgres user)"
SUITES=${WALARCH_BENCH_SUITES:-local s3 compression recovery backup encryption}
RTTS=${WALARCH_BENCH_RTTS:-0,20}
for suite in $SUITES; do
  case "$suite" in local|s3|compression|recovery|backup|encryption) ;; *) die "WALARCH_BENCH_SUITES: unknown suite $suite (local, s3, compression, recovery, backup, encryption)" ;; esac
done
[[ $RTTS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "WALARCH_BENCH_RTTS must be comma-separated whole numbers of ms"

# The exact command, for the report.
CMDLINE=""
for var in $(compgen -e | grep '^WALARCH_BENCH_' | sort || true); do
  CMDLINE+="$var=$(printf '%q' "${!var}") "
done
CMDLINE+="bash scripts/bench.sh"

VENV=$CACHE/bench-venv
if [ "${WALARCH_BENCH_SKIP_INSTALL:-0}" = 1 ]; then
  log "WALARCH_BENCH_SKIP_INSTALL=1: skipping setup.sh and the release build"
else
  bash scripts/setup.sh
fi
if ! command -v pgbackrest >/dev/null; then
  log "apt: installing pgbackrest"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade pgbackrest >/dev/null
fi
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  log "pip: matplotlib into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q matplotlib
fi

BIN=$(pg_bindir "$V")
[ -x "$BIN/pg_config" ] || die "PostgreSQL $V not found at $BIN (run scripts/setup.sh)"
if [ "${WALARCH_BENCH_SKIP_INSTALL:-0}" != 1 ]; then
  log "building and installing walarch_ext (release) into PostgreSQL $V, and the walarch command"
  cargo pgrx install --release --pg-config "$BIN/pg_config" >/dev/null
  cargo build --release -q -p walarch-cli -p rtt-proxy
fi
PROXY=$PWD/target/release/rtt-proxy
[ -x "$PROXY" ] || die "$PROXY is missing (cargo build --release -p rtt-proxy)"
LIBDIR=$("$BIN/pg_config" --pkglibdir)
for lib in walarch_ext basic_archive; do
  [ -f "$LIBDIR/$lib.so" ] || die "$LIBDIR/$lib.so is missing"
done

WORK=$(mktemp -d "$PARENT/walarch-bench.XXXXXX")
chmod 755 "$WORK"
cleanup() {
  local pidf p
  # clusters the harness may have left running (it stops them itself normally)
  for pidf in "$WORK"/*/data/postmaster.pid; do
    [ -f "$pidf" ] || continue
    runuser -u postgres -- "$BIN/pg_ctl" -D "$(dirname "$pidf")" -m immediate -w stop >/dev/null 2>&1 || true
  done
  # pgBackRest async servers of this run: their command line names our config
  for p in $(pgrep -f -- "--config=$WORK/" || true); do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

RC=0
if [[ " $SUITES " == *" local "* ]]; then
  log "benchmark, local suite: PostgreSQL $V, $SEGMENTS segments x $REPS reps, ${LOAD_SECONDS}s load, into $OUT (work dir $WORK)"
  "$VENV/bin/python" bench/walarch_bench.py \
    --pg-bin "$BIN" --workdir "$WORK" --out "$OUT" \
    --segments "$SEGMENTS" --reps "$REPS" --load-seconds "$LOAD_SECONDS" \
    --port-base $((27500 + (V - 15) * 100)) \
    --methods "${WALARCH_BENCH_METHODS:-}" --command "$CMDLINE" || RC=$?
fi
if [[ " $SUITES " == *" s3 "* ]]; then
  bash scripts/seaweed.sh install
  log "benchmark, s3 suite: PostgreSQL $V, $SEGMENTS segments x $REPS reps, RTT $RTTS ms, into $OUT (work dir $WORK)"
  # the system python: the harness uses the standard library only; the
  # plot runs in the venv
  python3 bench/s3_bench.py \
    --pg-bin "$BIN" --workdir "$WORK" --out "$OUT" \
    --segments "$SEGMENTS" --reps "$REPS" --rtts "$RTTS" \
    --port-base $((27550 + (V - 15) * 100)) --s3-port-base $((24000 + (V - 15) * 100)) \
    --proxy "$PROXY" --python "$VENV/bin/python" \
    --methods "${WALARCH_BENCH_METHODS:-}" --command "$CMDLINE" || RC=$?
fi
if [[ " $SUITES " == *" compression "* ]]; then
  bash scripts/seaweed.sh install
  log "benchmark, compression suite: PostgreSQL $V, $SEGMENTS segments x $REPS reps, into $OUT (work dir $WORK)"
  python3 bench/compression_bench.py \
    --pg-bin "$BIN" --workdir "$WORK" --out "$OUT" \
    --segments "$SEGMENTS" --reps "$REPS" --rtts "${WALARCH_BENCH_RTTS:-20}" \
    --port-base $((27700 + (V - 15) * 100)) --s3-port-base $((24500 + (V - 15) * 100)) \
    --proxy "$PROXY" --python "$VENV/bin/python" \
    --methods "${WALARCH_BENCH_METHODS:-}" --command "$CMDLINE" || RC=$?
fi
if [[ " $SUITES " == *" recovery "* ]]; then
  bash scripts/seaweed.sh install
  RSEGMENTS=${WALARCH_BENCH_SEGMENTS:-128}
  RWAL=${WALARCH_BENCH_RECOVERY_WAL:-heap,messages}
  [[ $RWAL =~ ^(heap|messages)(,(heap|messages))?$ ]] || die "WALARCH_BENCH_RECOVERY_WAL must be heap, messages or both, comma-separated"
  WALARCH=${WALARCH_BENCH_WALARCH:-$PWD/target/release/walarch}
  [ -x "$WALARCH" ] || die "$WALARCH is missing (cargo build --release -p walarch-cli)"
  log "benchmark, recovery suite: PostgreSQL $V, $RWAL WAL, base backup + $RSEGMENTS segments x $REPS reps, RTT $RTTS ms, into $OUT (work dir $WORK)"
  python3 bench/recovery_bench.py \
    --pg-bin "$BIN" --workdir "$WORK" --out "$OUT" \
    --segments "$RSEGMENTS" --reps "$REPS" --rtts "$RTTS" --wal "$RWAL" \
    --port-base $((27850 + (V - 15) * 100)) --s3-port-base $((25000 + (V - 15) * 100)) \
    --proxy "$PROXY" --walarch "$WALARCH" \
    --python "$VENV/bin/python" \
    --methods "${WALARCH_BENCH_METHODS:-}" --command "$CMDLINE" || RC=$?
fi
if [[ " $SUITES " == *" backup "* ]]; then
  bash scripts/seaweed.sh install
  SCALE=${WALARCH_BENCH_BACKUP_SCALE:-135}
  [[ $SCALE =~ ^[0-9]+$ ]] && [ "$SCALE" -ge 1 ] || die "WALARCH_BENCH_BACKUP_SCALE must be a whole number, at least 1"
  BDESTS=${WALARCH_BENCH_BACKUP_DESTS:-dir,s3}
  [[ $BDESTS =~ ^(dir|s3)(,(dir|s3))?$ ]] || die "WALARCH_BENCH_BACKUP_DESTS must be dir, s3 or both, comma-separated"
  WALARCH=${WALARCH_BENCH_WALARCH:-$PWD/target/release/walarch}
  [ -x "$WALARCH" ] || die "$WALARCH is missing (cargo build --release -p walarch-cli)"
  BRTT=${WALARCH_BENCH_RTTS:-20}
  log "benchmark, backup suite: PostgreSQL $V, pgbench scale $SCALE, $REPS reps, $BDESTS, RTT ${BRTT%%,*} ms, into $OUT (work dir $WORK)"
  python3 bench/backup_bench.py \
    --pg-bin "$BIN" --workdir "$WORK" --out "$OUT" \
    --scale "$SCALE" --reps "$REPS" --rtt "${BRTT%%,*}" --dests "$BDESTS" \
    --port-base $((28000 + (V - 15) * 100)) --s3-port-base $((25500 + (V - 15) * 100)) \
    --proxy "$PROXY" --walarch "$WALARCH" \
    --python "$VENV/bin/python" \
    --methods "${WALARCH_BENCH_METHODS:-}" --command "$CMDLINE" || RC=$?
fi
if [[ " $SUITES " == *" encryption "* ]]; then
  bash scripts/seaweed.sh install
  ERTT=${WALARCH_BENCH_RTTS:-20}
  log "benchmark, encryption suite: PostgreSQL $V, $SEGMENTS segments x $REPS reps, RTT ${ERTT%%,*} ms, into $OUT (work dir $WORK)"
  python3 bench/encryption_bench.py \
    --pg-bin "$BIN" --workdir "$WORK" --out "$OUT" \
    --segments "$SEGMENTS" --reps "$REPS" --rtts "${ERTT%%,*}" \
    --port-base $((28150 + (V - 15) * 100)) --s3-port-base $((26000 + (V - 15) * 100)) \
    --proxy "$PROXY" --python "$VENV/bin/python" \
    --methods "${WALARCH_BENCH_METHODS:-}" --command "$CMDLINE" || RC=$?
fi
exit "$RC"
