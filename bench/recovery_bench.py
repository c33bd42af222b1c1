#!/usr/bin/env python3
"""Recovery part of the benchmark: a base backup plus N segments of WAL
restored from SeaweedFS through bench/rtt-proxy, by walarch restore and by
pgBackRest archive-get, and from a local directory by walarch restore and cp.

Run through scripts/bench.sh (WALARCH_BENCH_SUITES contains "recovery").

- Two kinds of WAL (--wal, WALARCH_BENCH_RECOVERY_WAL; default both).
  heap: bench/gen_segment.sql, heap inserts; replaying them is real work, and
  on this machine replay rather than fetching bounds the recovery (the local
  cp floor is the replay's own speed). messages: the same shape (each segment
  filled up to 256 kB before its end, then pg_switch_wal()) but made of
  non-transactional logical decoding messages, pg_logical_emit_message(false,
  'walarch-bench', 8 kB of md5 text), which wal_level replica writes and
  whose replay does nothing: fetch-bound WAL, where the time to the end of
  recovery is nearly all fetching. It shows the fetch path, not a typical
  recovery.
- Setup, once per run, outside any timing: one SeaweedFS cluster behind
  bench/rtt-proxy (as in the s3 suite; the proxy runs at 0 ms for the setup).
  Then, per WAL kind, its own primary (walarch_ext as archive_library,
  compression off, into s3://wal/walarch-KIND) takes a plain base backup
  (pg_basebackup -X none -c fast, so every segment of the recovery comes from
  the archive) and completes N segments of that kind's WAL. Once they are
  archived, pgBackRest (repo1-type=s3, repo1-path=/pgbackrest-KIND, so each
  primary has its own repository and stanza, compress-type=none)
  archive-pushes the same segment files from pg_wal into the same bucket, and
  they are copied into a local directory in walarch's format (each segment
  with its sha256sum sidecar SEGMENT.sha256, checked by `walarch verify`),
  which both the cp floor and walarch's local-directory methods read. The
  primary is then stopped with -m immediate (a clean shutdown would switch and
  archive one more segment into walarch's archive only). Both archives are
  listed and must end at the same segment.
- Per run, interleaved: for each repetition, for each WAL kind, first the
  local-directory methods, then each RTT with every S3 method. For an RTT the
  proxy is restarted with it, on the same port and in front of the same
  store. The kind's base backup is copied into a fresh data directory with
  recovery.signal (no standby.signal, no target: archive recovery to the end
  of the archive, then promotion), the method's restore_command, archive_mode
  = off, log_line_prefix = '%m', and pg_ctl start -W; the clock starts right
  before pg_ctl. Consistency is the timestamp of "consistent recovery state
  reached", the end of recovery the timestamp of "database system is ready to
  accept connections" (after the end-of-recovery checkpoint; "archive
  recovery complete", before it, is kept in the JSON). The recovered server
  must then report pg_last_wal_replay_lsn() at or past the last segment's
  switch and the log must show that segment restored: a run that stopped
  short is a failure, not a result.
- Methods over S3: walarch restore with --no-prefetch, --prefetch 8 and
  --prefetch 32 (credentials in the postmaster's environment, --endpoint and
  --ca-file on the command line); pgBackRest archive-get sync, and async
  (spool per run) with archive-get-queue-max 128 MiB (its default) and 1 GiB
  at its default process-max of 1, and 1 GiB with process-max 8 (async
  archive-get fetches process-max segments in parallel). From the local
  directory (no S3, no proxy, so once per repetition whatever the RTTs; the
  files were just written and are read mostly from the page cache): walarch
  restore DIR with --no-prefetch and with --prefetch 8 (it checks every
  segment against its sidecar), and the floor, cp (startup, replay and the
  end-of-recovery checkpoint alone).
"""

import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import s3_bench as sb
import walarch_bench as wb
from walarch_bench import BenchError, Cluster, Method, chown_pg, log, run

METHODS = [
    Method("walarch-noprefetch", "walarch restore --no-prefetch", "walarch", args=["--no-prefetch"]),
    Method("walarch-prefetch8", "walarch restore --prefetch 8", "walarch", args=["--prefetch", "8"]),
    Method("walarch-prefetch32", "walarch restore --prefetch 32", "walarch",
           args=["--prefetch", "32"]),
    Method("pgbr-sync", "pgBackRest archive-get, sync", "pgbr", asynch=False),
    Method("pgbr-async", "pgBackRest archive-get, async, queue 128 MiB, process-max 1", "pgbr",
           asynch=True, pmax=1, queue=None),
    Method("pgbr-async-1g", "pgBackRest archive-get, async, queue 1 GiB, process-max 1", "pgbr",
           asynch=True, pmax=1, queue="1GiB"),
    Method("pgbr-async-1g-p8", "pgBackRest archive-get, async, queue 1 GiB, process-max 8", "pgbr",
           asynch=True, pmax=8, queue="1GiB"),
    Method("walarch-dir-noprefetch", "walarch restore DIR --no-prefetch (local directory)", "walarch",
           args=["--no-prefetch"], local=True),
    Method("walarch-dir-prefetch8", "walarch restore DIR --prefetch 8 (local directory)", "walarch",
           args=["--prefetch", "8"], local=True),
    Method("local-cp", "floor: cp from a local directory (no S3)", "cp", local=True),
]
FLOOR = "local"  # the "RTT" the local-directory methods are filed under
FLOOR_KEY = "local-cp"
# "× faster than": over S3 against walarch without prefetch, locally against the same from the
# directory
REFERENCE = "walarch-noprefetch"
LOCAL_REFERENCE = "walarch-dir-noprefetch"
PREFETCH_KEYS = ["walarch-prefetch8", "walarch-prefetch32"]

WAL_KINDS = {
    "heap": "heap inserts (bench/gen_segment.sql), replay-bound",
    "messages": "non-transactional logical decoding messages, fetch-bound",
}
SWITCH_SQL = "SELECT pg_switch_wal() IS NOT NULL AS switched;"
# One segment of the messages kind, shaped like bench/gen_segment.sql: 8 kB messages (256 md5s
# of random(), so no two alike) until 256 kB before the segment's end, then the switch. A
# non-transactional message takes no transaction id and touches no relation: its replay
# (logicalmsg_redo) does nothing.
MESSAGES_SQL = f"""DO $$
DECLARE
  segsz  bigint := pg_size_bytes(current_setting('wal_segment_size'));
  lsn    pg_lsn := pg_current_wal_insert_lsn();
  target pg_lsn;
BEGIN
  target := lsn + (segsz - (pg_walfile_name_offset(lsn)).file_offset - 262144);
  WHILE pg_current_wal_insert_lsn() < target LOOP
    PERFORM pg_logical_emit_message(false, 'walarch-bench',
      (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 256)));
  END LOOP;
END $$;
{SWITCH_SQL}
"""

TS_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC ")
USAGE_RE = re.compile(r"CPU: user: ([\d.]+) s, system: ([\d.]+) s, elapsed: ([\d.]+) s")
MARKS = {
    "first_line": None,  # any line: the postmaster is up
    "redo_start": "redo starts at",
    "consistent": "consistent recovery state reached at",
    "redo_done": "redo done at",
    "archive_complete": "archive recovery complete",
    "ready": "database system is ready to accept connections",
}
FATAL_RE = re.compile(r"\b(FATAL|PANIC):")


def log_time(line):
    m = TS_RE.match(line)
    if not m:
        return None
    dt = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def set_rtt(store, rtt):
    """Restarts the store's proxy with another round-trip time: the same command line
    (port, upstream, certificate, ready file) but --rtt-ms, in front of the same SeaweedFS,
    so every RTT and method reads the same objects."""
    old = store.proxy
    args = list(old.args)
    args[args.index("--rtt-ms") + 1] = str(rtt)
    ready = Path(args[args.index("--ready-file") + 1])
    old.send_signal(signal.SIGTERM)
    try:
        old.wait(10)
    except subprocess.TimeoutExpired:
        old.kill()
        old.wait()
    ready.unlink(missing_ok=True)
    logf = store.dir / "proxy.log"
    store.proxy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(logf, "a"))
    deadline = time.monotonic() + 10
    while not ready.exists():
        if store.proxy.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"rtt-proxy did not restart at {rtt} ms: {logf.read_text()[-2000:]}")
        time.sleep(0.02)
    store.rtt = rtt


def kill_leftovers(path):
    """Ends, by id, the processes working in or naming a path under path: what a
    restore_command leaves running after a run (a prefetch helper, which names its spool on
    its command line; pgBackRest's async archive-get, which names its configuration)."""
    path = str(path)
    needle = (path + "/").encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in (os.getpid(), os.getppid()):
            continue
        try:
            cwd = os.readlink(f"/proc/{d}/cwd")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if (cwd + "/").startswith(path + "/") or any(
                needle in arg + b"/" for arg in cmd.split(b"\0")):
            try:
                os.kill(int(d), signal.SIGTERM)
            except ProcessLookupError:
                pass


def postmaster_alive(c):
    try:
        os.kill(c.postmaster_pid(), 0)
        return True
    except (OSError, ValueError):
        return False


def seg_names(first, last):
    """Segment file names from first to last, same timeline, 16 MiB segments (256 per
    'log' id)."""
    tli = first[:8]
    a, b = int(first[8:16], 16) * 256 + int(first[16:], 16), int(last[8:16], 16) * 256 + int(last[16:], 16)
    return [f"{tli}{n // 256:08X}{n % 256:08X}" for n in range(a, b + 1)]


def is_local(m):
    return bool(m.params.get("local"))


def run_key(kind, m_key, rtt):
    """The key of a method's runs, in results and errors and the JSON: KIND:METHOD@RTT."""
    return f"{kind}:{m_key}@{rtt}"


class WalSet:
    """What one WAL kind's primary leaves for the recoveries: its base backup, its segments in
    walarch's and pgBackRest's archives (a prefix each in the one bucket) and in a local
    directory."""

    def __init__(self, work, kind):
        self.kind = kind
        self.base = work / f"base-{kind}"
        self.local = work / f"local-archive-{kind}"
        self.walarch_prefix = f"walarch-{kind}"
        self.pgbr_prefix = f"pgbackrest-{kind}"
        self.phases, self.setup_s, self.pgbr_error = {}, None, None
        self.names = self.first = self.last = self.end_lsn = self.base_bytes = self.sysid = None
        self.verify = None

    def facts(self):
        return {"setup_s": self.setup_s, "setup_phases_s": self.phases,
                "segments": len(self.names), "first": self.first, "last": self.last,
                "end_lsn": self.end_lsn, "base_bytes": self.base_bytes,
                "system_identifier": self.sysid, "walarch_prefix": self.walarch_prefix,
                "pgbackrest_repo_path": "/" + self.pgbr_prefix, "local_verify": self.verify}


class RecoveryHarness(sb.S3Harness):
    def __init__(self, args):
        super().__init__(args)
        self.walarch = args.walarch
        self.sets = {}
        self.facts = {}

    # ------------------------------------------------------------ setup

    def walarch_conf(self, c, prefix):
        """The primary's walarch_ext settings, as the s3 suite sets them."""
        s = self.store
        creds = c.dir / "s3-credentials"
        creds.write_text(f"[default]\naws_access_key_id = {s.access_key}\n"
                         f"aws_secret_access_key = {s.secret_key}\n")
        os.chmod(creds, 0o600)
        chown_pg(creds)
        return ["archive_library = 'walarch_ext'",
                f"walarch.archive_destination = 's3://{sb.BUCKET}/{prefix}'",
                f"walarch.s3_endpoint = '{s.endpoint}'", f"walarch.s3_ca_file = '{self.ca}'",
                f"walarch.s3_credentials_file = '{creds}'", "walarch.s3_uri_style = 'path'"]

    def segment_sql(self, kind):
        """The SQL that completes one segment of the kind's WAL; it ends with SWITCH_SQL."""
        sql = self.gen_sql if kind == "heap" else MESSAGES_SQL
        if SWITCH_SQL not in sql:
            raise BenchError(f"the {kind} WAL's SQL changed: its pg_switch_wal() line is not found")
        return sql

    def setup(self, kind, n, want_pgbr):
        """The kind's primary, base backup, N segments of its WAL, and its archives."""
        ws = WalSet(self.work, kind)
        t0 = prev = time.monotonic()

        def phase(name):
            nonlocal prev
            now = time.monotonic()
            ws.phases[name] = round(now - prev, 1)
            prev = now

        p = Cluster(self, f"primary-{kind}")
        seg_mb = 16
        # wal_keep_size: every segment since the backup stays in pg_wal for pgBackRest
        p.create(self.walarch_conf(p, ws.walarch_prefix)
                 + [f"wal_keep_size = '{(n + 8) * seg_mb}MB'"], preload="walarch_ext")
        p.start()
        phase("primary")
        self.pg_version = p.psql("SELECT version()")
        self.seg_size = int(p.psql("SELECT pg_size_bytes(current_setting('wal_segment_size'))"))
        if self.seg_size != 16 * 2**20:
            raise BenchError(f"segment size {self.seg_size}: the harness assumes 16 MiB")
        if kind == "heap":
            p.psql("CREATE TABLE bench_fill (id int, pad text)")
        ws.sysid = p.psql("SELECT system_identifier FROM pg_control_system()")

        # the base backup: plain, no WAL (every segment comes from the archive); it waits
        # until the backup's last segment is archived
        ws.base.mkdir()
        chown_pg(ws.base)
        os.chmod(ws.base, 0o700)
        log(f"recovery setup, {kind} WAL: base backup, then {n} segments archived by walarch_ext")
        run([str(self.bin / "pg_basebackup"), "-D", str(ws.base), "-X", "none", "-c", "fast",
             "-h", str(p.sock), "-p", str(p.port), "-U", "postgres", "--no-sync"],
            as_pg=True, cwd=p.dir, timeout=600)
        phase("base backup")
        label = (ws.base / "backup_label").read_text()
        first = re.search(r"^START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", label, re.M).group(1)

        # N segments of WAL; the last statement returns the last switch's LSN
        sql = self.segment_sql(kind)
        f = p.dir / "gen.sql"
        f.write_text(sql * (n - 1) + sql.replace(SWITCH_SQL, "SELECT pg_switch_wal();"))
        chown_pg(f)
        out = run([str(self.bin / "psql"), "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1",
                   "-h", str(p.sock), "-p", str(p.port), "-U", "postgres", "-d", "postgres",
                   "-f", str(f)], as_pg=True, timeout=3600, cwd=p.dir).stdout
        ws.end_lsn = out.split()[-1]
        phase("WAL generation")
        last = p.psql(f"SELECT pg_walfile_name('{ws.end_lsn}')")
        names = seg_names(first, last)
        if len(names) < n:
            raise BenchError(f"only {len(names)} segments from {first} to {last}, wanted {n}")
        deadline = time.monotonic() + 300 + 5 * n
        while not (p.archive_status / f"{last}.done").exists():
            if time.monotonic() > deadline:
                raise BenchError(f"walarch_ext did not archive {last} in time\n{p.log_tail()}")
            time.sleep(0.1)
        phase("archiving's tail")
        pg_wal = p.data / "pg_wal"
        missing = [s for s in names if not (pg_wal / s).exists()]
        if missing:
            raise BenchError(f"segments gone from pg_wal before pgBackRest could push them: {missing[:3]}")
        if want_pgbr:
            self.pgbr_push(ws, p, names)
        phase("pgBackRest archive-push")
        self.local_archive(ws, pg_wal, names)
        phase("local copy and walarch verify")
        # immediate: a clean shutdown would switch once more and archive one more segment
        p.stop("immediate")
        p.h.kill_pgbackrest(p.dir)

        # both archives hold exactly the same segments from the backup's first to the last
        wal = sorted(k.rsplit("/", 1)[-1] for k in self.store.keys(ws.walarch_prefix + "/")
                     if wb.SEG_RE.match(k.rsplit("/", 1)[-1]))
        have = [s for s in wal if s >= first]
        if have != names:
            raise BenchError(f"walarch's archive holds {len(have)} segments from {first} "
                             f"(last {have[-1] if have else '-'}), expected {len(names)} to {last}")
        if want_pgbr and not ws.pgbr_error:
            pg = sorted(k.rsplit("/", 1)[-1][:24]
                        for k in self.store.keys(f"{ws.pgbr_prefix}/archive/{wb.STANZA}/")
                        if wb.PGBR_SEG_RE.match(k.rsplit("/", 1)[-1]))
            if pg != names:
                raise BenchError(f"pgBackRest's archive holds {len(pg)} segments "
                                 f"(last {pg[-1] if pg else '-'}), expected {len(names)} to {last}")
        ws.names, ws.first, ws.last = names, first, last
        ws.base_bytes = sum(f.stat().st_size for f in ws.base.rglob("*") if f.is_file())
        p.destroy()
        phase("checks")
        ws.setup_s = time.monotonic() - t0
        log(f"recovery setup, {kind} WAL, done in {ws.setup_s:.0f}s: base backup "
            f"{ws.base_bytes / 2**20:.0f} MiB, segments {first}..{last} ({len(names)}), end LSN "
            f"{ws.end_lsn}; " + ", ".join(f"{k} {v:.0f}s" for k, v in ws.phases.items()))
        return ws

    def pgbr_push(self, ws, p, names):
        """The segments from p's pg_wal into the kind's pgBackRest repository (its own repo
        path: a stanza is bound to one system identifier), sync archive-push, 4 at a time. A
        pgBackRest too old for this PostgreSQL is noted in ws.pgbr_error."""
        push = Method("pgbr-push", "", "pgbr", asynch=False)
        self.write_pgbr_s3_conf(push, p, ws.pgbr_prefix)
        conf = self.pgbr_conf(p)
        try:
            run(["pgbackrest", f"--config={conf}", f"--stanza={wb.STANZA}", "stanza-create"],
                as_pg=True, cwd=p.dir, timeout=120)
            log(f"recovery setup, {ws.kind} WAL: pgBackRest archive-push of the same "
                f"{len(names)} segments")
            run(["runuser", "-u", "postgres", "--", "xargs", "-P", "4", "-I{}", "pgbackrest",
                 f"--config={conf}", f"--stanza={wb.STANZA}", "archive-push",
                 f"{p.data}/pg_wal/{{}}"], input="".join(s + "\n" for s in names),
                cwd=p.dir, timeout=600 + 5 * len(names))
        except BenchError as e:
            msg = str(e).strip()
            if "VersionNotSupportedError" not in msg:
                raise
            ws.pgbr_error = (f"not run: {wb.sh('pgbackrest version')} does not support this "
                             f"PostgreSQL\n{msg}")

    def local_archive(self, ws, pg_wal, names):
        """The segments into ws.local in walarch's local-directory format: each with the
        sidecar SEGMENT.sha256 holding its sha256sum line, as walarch_ext writes it. walarch
        verify must accept the directory; cp ignores the sidecars."""
        ws.local.mkdir()
        run(["cp", "-t", str(ws.local), *(str(pg_wal / s) for s in names)], timeout=600)
        sums = run(["sha256sum", "--", *names], cwd=ws.local, timeout=600).stdout.splitlines()
        if len(sums) != len(names):
            raise BenchError(f"sha256sum printed {len(sums)} lines for {len(names)} segments")
        for s, line in zip(names, sums):
            if not re.fullmatch(rf"[0-9a-f]{{64}}  {s}", line):
                raise BenchError(f"unexpected sha256sum line for {s}: {line!r}")
            (ws.local / f"{s}.sha256").write_text(line + "\n")
        run(["chown", "-R", "postgres:postgres", str(ws.local)])
        out = run([self.walarch, "verify", str(ws.local), "--json"], as_pg=True, cwd=ws.local,
                  timeout=600).stdout
        v = json.loads(out)
        ws.verify = {k: v.get(k) for k in ("intact", "checked", "problems", "timelines")}
        if not v.get("intact") or v.get("checked") != len(names):
            raise BenchError(f"walarch verify {ws.local}: {len(names)} segments expected\n{out[-2000:]}")

    def probe(self, m, ws):
        """None if `walarch restore` accepts m's arguments, else why not (exit 2 "unknown
        option" until --prefetch/--no-prefetch exist)."""
        d = self.work / f"probe-{m.key}"
        (d / "pg_wal").mkdir(parents=True)
        # it looks like a data directory, where the restored file goes to pg_wal
        (d / "PG_VERSION").write_text((ws.base / "PG_VERSION").read_text())
        run(["chown", "-R", "postgres:postgres", str(d)])
        try:
            p = run(self.walarch_cmd(m, ws, "0000000100000000000000FF", "pg_wal/RECOVERYXLOG"),
                    as_pg=True, check=False, cwd=d, env=self.walarch_env(), timeout=120)
        finally:
            kill_leftovers(d)
            shutil.rmtree(d, ignore_errors=True)
        if p.returncode in (0, 1):
            return None
        return (f"not run: `walarch restore ... {' '.join(m.params['args'])}` exits "
                f"{p.returncode}: {p.stderr.strip()[:600]}")

    # ------------------------------------------------------------ one recovery

    def walarch_cmd(self, m, ws, f, p):
        if is_local(m):
            return [self.walarch, "restore", str(ws.local), f, p, *m.params["args"]]
        return [self.walarch, "restore", f"s3://{sb.BUCKET}/{ws.walarch_prefix}", f, p,
                "--endpoint", self.store.endpoint, "--ca-file", str(self.ca), *m.params["args"]]

    def walarch_env(self):
        s = self.store
        return dict(os.environ, AWS_ACCESS_KEY_ID=s.access_key, AWS_SECRET_ACCESS_KEY=s.secret_key,
                    AWS_REGION=sb.REGION)

    def restore_command(self, m, ws, c):
        if m.kind == "walarch":
            return shlex.join(self.walarch_cmd(m, ws, "%f", "%p"))
        if m.kind == "pgbr":
            return f'pgbackrest --config={self.pgbr_conf(c)} --stanza={wb.STANZA} archive-get %f "%p"'
        return f'cp {ws.local}/%f "%p"'

    def recover(self, m, ws, rtt, rep):
        n = len(ws.names)
        c = Cluster(self, f"rec-{ws.kind}-{m.key}-{rtt}-{rep}")
        try:
            run(["cp", "-a", str(ws.base), str(c.data)])
            env = None
            if m.kind == "pgbr":
                self.write_pgbr_s3_conf(m, c, ws.pgbr_prefix)
                if m.params.get("queue"):
                    with open(self.pgbr_conf(c), "a") as f:
                        f.write(f"[global:archive-get]\narchive-get-queue-max={m.params['queue']}\n")
            elif m.kind == "walarch" and not is_local(m):
                env = self.walarch_env()
            cmd = self.restore_command(m, ws, c)
            with open(c.data / "postgresql.conf", "a") as f:
                f.write("\n# this recovery\n" + "\n".join([
                    f"port = {c.port}", f"unix_socket_directories = '{c.sock}'",
                    "archive_mode = off", "archive_library = ''", "shared_preload_libraries = ''",
                    "restore_command = '" + cmd.replace("'", "''") + "'",
                    "log_line_prefix = '%m [%p] '", "log_timezone = 'UTC'",
                ]) + "\n")
            (c.data / "recovery.signal").touch()
            chown_pg(c.data / "recovery.signal")
            os.sync()  # the copy's dirty pages must not be written back during the timing
            limit = 180 + 5 * n
            self.live.append(c)
            c.running = True
            t0 = time.time()
            run([str(self.bin / "pg_ctl"), "-D", str(c.data), "-l", str(c.logfile), "-W", "start"],
                as_pg=True, cwd=c.dir, env=env)
            marks, restored, last_restored, usage = {}, 0, False, None
            pos, buf = 0, ""
            while "ready" not in marks:
                time.sleep(0.02)
                chunk = c.log_since(pos)
                pos += len(chunk.encode())
                buf += chunk
                lines, buf = buf.split("\n"), ""
                if lines and not chunk.endswith("\n"):
                    buf = lines.pop()
                for ln in lines:
                    ts = log_time(ln)
                    for k, needle in MARKS.items():
                        if k not in marks and ts is not None and (needle is None or needle in ln):
                            marks[k] = ts - t0
                    if "restored log file" in ln:
                        restored += 1
                        last_restored = last_restored or f'"{ws.last}"' in ln
                    if "redo done at" in ln:
                        usage = USAGE_RE.search(ln)
                    if FATAL_RE.search(ln) or "database system is shut down" in ln:
                        raise BenchError(f"recovery failed:\n{c.log_tail()}")
                if time.time() - t0 > 5 and not postmaster_alive(c):
                    raise BenchError(f"the server is gone during recovery:\n{c.log_tail()}")
                if time.time() - t0 > limit:
                    raise BenchError(f"recovery did not end in {limit}s\n{c.log_tail()}")
            lsn, inrec, covered = c.psql(
                "SELECT pg_last_wal_replay_lsn(), pg_is_in_recovery(), "
                f"pg_last_wal_replay_lsn() >= '{ws.end_lsn}'::pg_lsn").split("|")
            if inrec != "f" or covered != "t" or not last_restored:
                raise BenchError(f"recovery stopped short: replayed to {lsn}, the archive ends at "
                                 f"{ws.end_lsn} ({ws.last} restored: {last_restored}); "
                                 f"{restored} files restored\n{c.log_tail()}")
            problems = [ln for ln in c.log_since(0).splitlines()
                        if re.search(r"\b(WARNING|ERROR):", ln)]
            return {"segments": n, "restored": restored, "replay_lsn": lsn,
                    "consistent_s": marks.get("consistent"), "end_s": marks["ready"],
                    "archive_complete_s": marks.get("archive_complete"),
                    "redo_s": (marks["redo_done"] - marks["redo_start"])
                    if "redo_done" in marks and "redo_start" in marks else None,
                    "postmaster_s": marks.get("first_line"),
                    "startup_cpu_s": float(usage.group(1)) + float(usage.group(2)) if usage else None,
                    "restore_command": cmd, "log_problems": problems[:5]}
        finally:
            c.destroy()
            kill_leftovers(c.dir)

    # ------------------------------------------------------------ the whole run

    def main(self):
        a = self.a
        started = time.monotonic()
        rtts = [int(x) for x in a.rtts.split(",")]
        kinds = a.wal.split(",")
        only = set(a.methods.split(",")) if a.methods else None
        methods = [m for m in METHODS if not only or m.key in only]
        if not methods:
            raise SystemExit(f"no method among {a.methods}")
        results, errors = {}, {}
        for kind in kinds:
            for m in methods:
                for rtt in ([FLOOR] if is_local(m) else rtts):
                    results[run_key(kind, m.key, rtt)] = []
        t = time.monotonic()
        self.store = sb.Store(self, "store", 0)
        self.store.rtt = 0
        store_s = time.monotonic() - t
        want_pgbr = any(m.kind == "pgbr" for m in methods)
        for kind in kinds:
            self.sets[kind] = self.setup(kind, a.segments, want_pgbr)
        probed = {m.key: self.probe(m, self.sets[kinds[0]]) for m in methods if m.kind == "walarch"}
        for k, why in probed.items():
            if why:
                log(f"   {k}: {why.splitlines()[0]}")
        durations = []
        for rep in range(1, a.reps + 1):
            for kind, ws in self.sets.items():
                for rtt in [FLOOR] + rtts:
                    for m in methods:
                        if is_local(m) != (rtt == FLOOR):
                            continue
                        key = run_key(kind, m.key, rtt)
                        why = probed.get(m.key) or (ws.pgbr_error if m.kind == "pgbr" else None)
                        if why:
                            errors.setdefault(key, why)
                            continue
                        if rtt != FLOOR and self.store.rtt != rtt:
                            set_rtt(self.store, rtt)
                        where = "local directory" if rtt == FLOOR else f"RTT {rtt} ms"
                        log(f"recovery rep {rep}/{a.reps}, {kind} WAL, {where}: {m.label} "
                            f"({len(ws.names)} segments)")
                        t = time.monotonic()
                        try:
                            r = self.recover(m, ws, rtt, rep)
                        except BenchError as e:
                            msg = str(e).strip()
                            log(f"   FAILED: {msg}")
                            errors.setdefault(key, msg)
                            continue
                        durations.append(time.monotonic() - t)
                        results[key].append(r)
                        log(f"   consistent after {wb.fmt(r['consistent_s'])}s, recovered in "
                            f"{r['end_s']:.2f}s ({r['segments'] / r['end_s']:.1f} segments/s; "
                            f"startup process CPU {wb.fmt(r['startup_cpu_s'])}s)")
        self.facts = {"total_s": time.monotonic() - started, "store_setup_s": store_s,
                      "run_wall_s": durations,
                      "wal": {k: ws.facts() for k, ws in self.sets.items()}}
        return methods, kinds, rtts, results, errors


# ---------------------------------------------------------------- report

def reference(rtt):
    return LOCAL_REFERENCE if rtt == FLOOR else REFERENCE


def summarize(methods, kinds, rtts, results):
    rows = []
    for kind in kinds:
        for rtt in rtts + [FLOOR]:
            for m in methods:
                runs = results.get(run_key(kind, m.key, rtt)) or []
                if not runs:
                    continue
                end = [r["end_s"] for r in runs]
                cons = [r["consistent_s"] for r in runs if r["consistent_s"] is not None]
                cpu = [r["startup_cpu_s"] for r in runs if r["startup_cpu_s"] is not None]
                rows.append({"wal": kind, "rtt": rtt, "key": m.key, "label": m.label,
                             "kind": m.kind, "n": len(runs),
                             "end_s": statistics.median(end), "end_min": min(end),
                             "end_max": max(end),
                             "consistent_s": statistics.median(cons) if cons else None,
                             "cons_min": min(cons) if cons else None,
                             "cons_max": max(cons) if cons else None,
                             "seg_s": runs[0]["segments"] / statistics.median(end),
                             "startup_cpu_s": statistics.median(cpu) if cpu else None,
                             "restore_command": runs[0]["restore_command"],
                             "problems": [ln for r in runs for ln in r["log_problems"]][:5]})
    for row in rows:
        same = [r for r in rows if r["wal"] == row["wal"]]
        floor = next((r for r in same if r["key"] == FLOOR_KEY), None)
        ref = next((r for r in same if r["rtt"] == row["rtt"] and r["key"] == reference(row["rtt"])),
                   None)
        row["vs_ref"] = ref["end_s"] / row["end_s"] if ref else None
        row["over_floor_s"] = row["end_s"] - floor["end_s"] if floor and row is not floor else None
    return rows


def verdicts(kinds, rtts, rows):
    """Per WAL kind and RTT, from the medians to the end of recovery alone: is walarch's
    prefetch (each depth, and the faster of them) at least 4× as fast as no prefetch, and
    faster than the fastest pgBackRest method? Then the local directory's numbers."""
    out = []
    for kind in kinds:
        for rtt in rtts:
            sel = {r["key"]: r for r in rows if r["wal"] == kind and r["rtt"] == rtt}
            ref, pre = sel.get(REFERENCE), [sel[k] for k in PREFETCH_KEYS if k in sel]
            pg = sorted((r for r in sel.values() if r["kind"] == "pgbr"), key=lambda r: r["end_s"])
            head = f"- {kind} WAL, RTT {rtt} ms:"
            if not ref or not pre:
                out.append(f"{head} not measured ({REFERENCE} or both prefetch methods have "
                           f"no result).")
                continue
            best_pg = pg[0] if pg else None

            def judge(r):
                x = ref["end_s"] / r["end_s"]
                s = f"{x:.2f}× ({'at least' if x >= 4 else 'less than'} 4×)"
                if best_pg:
                    s += (f", {'faster' if r['end_s'] < best_pg['end_s'] else 'not faster'} than "
                          f"{best_pg['key']}")
                return s

            best = min(pre, key=lambda r: r["end_s"])
            out.append(
                f"{head} {REFERENCE} {ref['end_s']:.2f} s; "
                + "; ".join(f"{r['key']} {r['end_s']:.2f} s, {judge(r)}" for r in pre)
                + (f". The faster prefetch, {best['key']}: {judge(best)}. " if len(pre) > 1 else ". ")
                + (f"The fastest pgBackRest method: {best_pg['key']}, {best_pg['end_s']:.2f} s."
                   if best_pg else "No pgBackRest method has a result."))
        sel = [r for r in rows if r["wal"] == kind and r["rtt"] == FLOOR]
        if sel:
            out.append(f"- {kind} WAL, local directory: " + "; ".join(
                f"{r['key']} {r['end_s']:.2f} s" +
                (f", {r['vs_ref']:.2f}×" if r["vs_ref"] is not None and r["key"] != LOCAL_REFERENCE
                 else "") for r in sel) + ".")
    return out


def results_table(w, sel, failed, errors, ref_key):
    w("| method | median s to consistency (min–max) | median s to end of recovery (min–max) "
      f"| segments/s | × faster than {ref_key} | s over the floor | startup process CPU s |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for r in sel:
        cons = ("–" if r["consistent_s"] is None else
                f"{r['consistent_s']:.2f} ({r['cons_min']:.2f}–{r['cons_max']:.2f})")
        w(f"| {r['label']} | {cons} | {r['end_s']:.2f} ({r['end_min']:.2f}–{r['end_max']:.2f}) | "
          f"{r['seg_s']:.1f} | {wb.fmt(r['vs_ref'])} | {wb.fmt(r['over_floor_s'], 1)} | "
          f"{wb.fmt(r['startup_cpu_s'])} |")
    for m, key in failed:
        why = "not run" if errors[key].startswith("not run:") else "failed"
        w(f"| {m.label} | {why} (below) | | | | | |")
    w("")


def markdown(h, methods, kinds, rtts, rows, errors, mach, png_name, command):
    a, f = h.a, h.facts
    out = []
    w = out.append
    w("# walarch_ext benchmark: recovery from object storage\n")
    w("Generated by `scripts/bench.sh` (harness: `bench/recovery_bench.py`); every figure below "
      "comes from the run described here.\n")
    w(f"Command: `{command}`\n")
    w(f"Machine: {mach['cpu']}, {mach['mem']}, {mach['virt'] or 'bare metal?'}, {mach['kernel']}, "
      f"{mach['os']}. Work directory: {mach['fs']}. Load average when the report was written: "
      f"{mach['loadavg']} (other work on the machine is not controlled).\n")
    w(f"PostgreSQL: {mach['pg']}. pgBackRest: {mach['pgbackrest']}. walarch: `{h.walarch}` "
      f"({wb.sh(f'stat -c %y {shlex.quote(h.walarch)}')[:16]}). walarch_ext (archives in the "
      f"setup only, not timed): {mach['walarch']}. SeaweedFS: "
      f"{wb.sh(str(Path(os.environ.get('WALARCH_S3_PREFIX', '/var/cache/walarch/s3')) / 'bin' / 'weed') + ' version')}.\n")
    w(f"Recovery of a base backup (`pg_basebackup -X none`) plus the segments of 16 MiB of one "
      f"WAL kind, {a.segments} of them generated after the backup (the rest is the backup's "
      f"own), each kind with its own primary and archives:\n")
    for kind in kinds:
        k = f["wal"][kind]
        w(f"- {kind} WAL, {WAL_KINDS[kind]}: base backup {k['base_bytes'] / 2**20:.0f} MiB, "
          f"{k['segments']} segments ({k['first']} to {k['last']}, up to LSN {k['end_lsn']}); "
          f"setup {k['setup_s']:.0f} s ("
          + ", ".join(f"{p} {v:.0f} s" for p, v in k["setup_phases_s"].items()) + ")")
    w(f"\n{a.reps} repetition(s), interleaved (each repetition: each WAL kind in turn, its "
      f"local-directory methods, then each RTT with every S3 method); round-trip times "
      f"{', '.join(map(str, rtts))} ms. Starting SeaweedFS took {f['store_setup_s']:.0f} s, the "
      f"whole suite {f['total_s'] / 60:.1f} min; one recovery run (copy, recovery, checks, "
      f"clean-up) took {min(f['run_wall_s'] or [0]):.1f}–{max(f['run_wall_s'] or [0]):.1f} s.\n")
    w("## Prefetch against no prefetch and pgBackRest\n")
    w(f"From the medians to the end of recovery; a ratio is {REFERENCE}'s median over the "
      f"method's at the same WAL kind and RTT (locally, {LOCAL_REFERENCE}'s), the tables' "
      f"× column. The heap WAL's recovery is bounded by replay (see the local cp floor), the "
      f"messages WAL's almost only by fetching.\n")
    for line in verdicts(kinds, rtts, rows):
        w(line)
    w("")
    for kind in kinds:
        w(f"## {kind} WAL: {WAL_KINDS[kind]}\n")
        for rtt in rtts + [FLOOR]:
            sel = [r for r in rows if r["wal"] == kind and r["rtt"] == rtt]
            failed = [(m, run_key(kind, m.key, rtt)) for m in methods
                      if run_key(kind, m.key, rtt) in errors and not any(r["key"] == m.key for r in sel)]
            if not sel and not failed:
                continue
            w(f"### {kind} WAL, {'local directory (no S3, no proxy)' if rtt == FLOOR else f'RTT {rtt} ms'}\n")
            results_table(w, sel, failed, errors, reference(rtt))
    w(f"![time to end of recovery by WAL kind, method and RTT]({png_name})\n")
    w("## restore_command of each method\n")
    w("As run for the first WAL kind (the port is the proxy's; the walarch methods over S3 get "
      "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION from the postmaster's "
      "environment, pgBackRest its key from its configuration file). Each kind has its own "
      "prefix `walarch-KIND`, repository path `/pgbackrest-KIND` and local directory "
      "`local-archive-KIND`:\n")
    seen = set()
    for r in rows:
        if r["wal"] == kinds[0] and r["key"] not in seen:
            seen.add(r["key"])
            w(f"- {r['key']}: `{r['restore_command']}`")
    pg = [m for m in methods if m.kind == "pgbr"]
    if pg:
        w("\npgBackRest's configuration: `repo1-type=s3`, `repo1-path=/pgbackrest-KIND`, "
          "`repo1-storage-verify-tls=n`, `compress-type=none`, `spool-path` in the run's own "
          "directory; " + "; ".join(
              f"{m.key}: `archive-async={'y' if m.params['asynch'] else 'n'}`" +
              (f", `process-max={m.params['pmax']}`, `archive-get-queue-max="
               f"{m.params.get('queue') or '128MiB (default)'}`" if m.params["asynch"] else "")
              for m in pg) + ".")
    w("")
    w("## How it is measured\n")
    w(__doc__.split("\n\n", 1)[1].strip() + "\n")
    w("- segments/s: the segments of the recovery (the backup's and the generated ones) over the "
      f"median time to the end of recovery. × faster: {REFERENCE}'s median time to the end "
      f"of recovery at the same WAL kind and RTT over the method's ({LOCAL_REFERENCE}'s for the "
      "local directory). s over the floor: the method's median time to the end minus the local "
      "cp floor's for the same WAL kind. Startup process CPU: user + system CPU of the startup "
      "process from its \"redo done\" log line, i.e. the replay's own cost (restore_command's "
      "children not included).\n")
    w("## Every run\n")
    w("| WAL | method | RTT | rep | files restored | s to consistency | s to end | redo s | "
      "startup CPU s |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, runs in h.results.items():
        kind, rest = key.split(":", 1)
        mk, rtt = rest.rsplit("@", 1)
        for i, r in enumerate(runs, 1):
            w(f"| {kind} | {mk} | {rtt} | {i} | {r['restored']} | {wb.fmt(r['consistent_s'])} | "
              f"{r['end_s']:.2f} | {wb.fmt(r['redo_s'])} | {wb.fmt(r['startup_cpu_s'])} |")
    w("")
    if errors:
        wb.failures(w, errors)
    probs = [(r["wal"], r["key"], r["rtt"], ln) for r in rows for ln in r["problems"]]
    if probs:
        w("Server log lines with WARNING or ERROR (first few per WAL kind, method and RTT):\n")
        w("```")
        w("\n".join(f"{kind} {k} @ {rtt}: {ln}" for kind, k, rtt, ln in probs))
        w("```\n")
    return "\n".join(out)


def plot(rows, png, kinds, segments, python):
    code = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.loads(sys.stdin.read())
kinds = [k for k in d["kinds"] if any(r["wal"] == k for r in d["rows"])]
fig, axes = plt.subplots(len(kinds), 1, figsize=(11, 6 * len(kinds)), squeeze=False)
for ax, kind in zip(axes[:, 0], kinds):
    rows = [r for r in d["rows"] if r["wal"] == kind]
    floor = next((r for r in rows if r["key"] == "local-cp"), None)
    series = list(dict.fromkeys(r["rtt"] for r in rows))  # the RTTs, then "local"
    labels = list(dict.fromkeys(r["label"] for r in rows))
    if floor:
        ax.axvline(floor["end_s"], color="black", linestyle="--", linewidth=1,
                   label=f"floor: cp from a local directory, {floor['end_s']:.1f} s")
    width = 0.8 / len(series)
    # each label's bars centred on it: the local-directory methods have one, the others one per RTT
    present = {lab: [x["rtt"] for x in rows if x["label"] == lab] for lab in labels}
    for i, s in enumerate(series):
        xs, ends, los, his, cons = [], [], [], [], []
        for j, lab in enumerate(labels):
            r = next((x for x in rows if x["label"] == lab and x["rtt"] == s), None)
            if not r:
                continue
            here = present[lab]
            xs.append(j + (here.index(s) - (len(here) - 1) / 2) * width)
            ends.append(r["end_s"])
            los.append(r["end_s"] - r["end_min"])
            his.append(r["end_max"] - r["end_s"])
            cons.append(r["consistent_s"] or 0)
        name = "local directory" if s == "local" else f"RTT {s} ms"
        ax.barh(xs, ends, height=width, xerr=[los, his], label=f"{name}: end of recovery",
                capsize=2)
        ax.barh(xs, cons, height=width * 0.5, color="black", alpha=0.35,
                label="to consistency" if i == 0 else None)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from pg_ctl start (median; bars: min-max)")
    ax.set_title(f"{kind} WAL, {d['titles'][kind]}: base backup + {d['segments'][kind]} segments",
                 fontsize=10)
    ax.legend(fontsize=8)
fig.suptitle("Recovery from SeaweedFS through a TLS + RTT proxy, and from a local directory",
             fontsize=11)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=110)
'''
    p = subprocess.run([python, "-c", code, str(png)], text=True, input=json.dumps(
        {"rows": rows, "kinds": kinds, "titles": WAL_KINDS, "segments": segments}))
    if p.returncode != 0:
        raise SystemExit("plotting failed")


def main():
    ap = wb.arguments(__doc__, 27850)
    ap.set_defaults(segments=128)
    ap.add_argument("--rtts", default="0,20")
    ap.add_argument("--wal", default=",".join(WAL_KINDS),
                    help=f"comma-separated WAL kinds, of {', '.join(WAL_KINDS)} (default: all)")
    ap.add_argument("--s3-port-base", type=int, default=25000)
    ap.add_argument("--proxy", required=True, help="the rtt-proxy binary")
    ap.add_argument("--walarch", default="/usr/local/bin/walarch", help="the walarch command")
    ap.add_argument("--python", required=True, help="a python with matplotlib, for the plot")
    a = ap.parse_args()
    a.load_seconds = 0
    if a.segments < 1 or a.reps < 1:
        raise SystemExit("--segments and --reps must be at least 1")
    kinds = a.wal.split(",")
    if not set(kinds) <= set(WAL_KINDS) or len(set(kinds)) != len(kinds):
        raise SystemExit(f"--wal: {a.wal!r} is not a list of distinct kinds among "
                         f"{', '.join(WAL_KINDS)}")
    if not os.access(a.walarch, os.X_OK):
        raise SystemExit(f"{a.walarch} is not an executable")
    h = RecoveryHarness(a)
    wb.exit_on_signals()
    try:
        methods, kinds, rtts, results, errors = h.main()
    finally:
        h.cleanup()
        if h.store:
            h.store.stop()
        kill_leftovers(h.work)
    h.results = results
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(methods, kinds, rtts, results)
    mach = wb.machine(h)
    png = out / "benchmark-recovery.png"
    md = markdown(h, methods, kinds, rtts, rows, errors, mach, png.name, a.command)
    (out / "benchmark-recovery.md").write_text(md)
    (out / "benchmark-recovery.json").write_text(
        json.dumps({"rows": rows, "runs": results, "errors": errors, "facts": h.facts}, indent=1))
    if rows:
        plot(rows, png, kinds, {k: v["segments"] for k, v in h.facts["wal"].items()}, a.python)
    log(f"wrote {out / 'benchmark-recovery.md'} and {png}")
    print(md.split("## restore_command of each method")[0])
    real = [k for k, msg in errors.items() if not msg.startswith("not run:")]
    return 1 if real else 0


if __name__ == "__main__":
    raise SystemExit(main())
