-- pgbench script for the sustained-load measurement: insert-heavy, 100 rows
-- of about 200 bytes per transaction (the report gives the WAL rate reached).
\set aid random(1, 1000000)
INSERT INTO bench_load (aid, n, filler)
  SELECT :aid, g, md5(random()::text) || repeat('x', 150)
  FROM generate_series(1, 100) g;
