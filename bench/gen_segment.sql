-- Completes exactly one WAL segment of real WAL (heap inserts), then switches.
-- Repeated N times by the harness to build a backlog of N .ready segments.
-- It fills the current segment up to 256 kB before its end (each batch writes
-- well under that), so a batch never spills into the next segment, and
-- TRUNCATE keeps the heap small so that little besides WAL reaches the disk.
DO $$
DECLARE
  segsz  bigint := pg_size_bytes(current_setting('wal_segment_size'));
  lsn    pg_lsn := pg_current_wal_insert_lsn();
  target pg_lsn;
BEGIN
  TRUNCATE bench_fill;
  target := lsn + (segsz - (pg_walfile_name_offset(lsn)).file_offset - 262144);
  WHILE pg_current_wal_insert_lsn() < target LOOP
    INSERT INTO bench_fill
      SELECT g, md5(random()::text) || md5(random()::text)
      FROM generate_series(1, 500) g;
  END LOOP;
END $$;
SELECT pg_switch_wal() IS NOT NULL AS switched;
