-- walarch_ext 0.1.0 -> 0.2.0
--
-- walarch_stats() gains four columns (last_transfer_ms, mean_transfer_ms,
-- bytes_in_flight, stored_bytes): the function and the view over it are
-- recreated, with their privileges. walarch_expire() is new. The library's
-- shared-memory layout and its statistics file format changed too: the new library takes effect only after a server
-- restart (it is in shared_preload_libraries), and a statistics file of
-- 0.1.0 is discarded at that start with a LOG line.
\echo Use "ALTER EXTENSION walarch_ext UPDATE TO '0.2.0'" to load this file. \quit

DROP VIEW walarch_stat_archiver;
DROP FUNCTION walarch_stats();

CREATE FUNCTION "walarch_stats"() RETURNS TABLE (
	"archived_count" bigint,
	"last_archived_wal" TEXT,
	"last_archived_time" timestamp with time zone,
	"failed_count" bigint,
	"last_failed_wal" TEXT,
	"last_failed_time" timestamp with time zone,
	"stats_reset" timestamp with time zone,
	"pending_count" bigint,
	"pending_bytes" bigint,
	"oldest_pending_wal" TEXT,
	"archived_bytes" bigint,
	"copied_ahead_count" bigint,
	"copy_ahead_failures" bigint,
	"last_error" TEXT,
	"worker_pid" INT,
	"last_transfer_ms" double precision,
	"mean_transfer_ms" double precision,
	"bytes_in_flight" bigint,
	"stored_bytes" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'walarch_stats_wrapper';

CREATE VIEW walarch_stat_archiver AS SELECT * FROM walarch_stats();

REVOKE ALL ON FUNCTION walarch_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION walarch_stats() TO pg_monitor;
REVOKE ALL ON walarch_stat_archiver FROM PUBLIC;
GRANT SELECT ON walarch_stat_archiver TO pg_monitor;

-- walarch_expire(): retention on the configured archive, superuser-only
-- unless granted.
CREATE FUNCTION "walarch_expire"(
	"keep_backups" INT DEFAULT NULL,
	"before_wal" TEXT DEFAULT NULL,
	"older_than" interval DEFAULT NULL,
	"dry_run" bool DEFAULT true
) RETURNS TABLE (
	"walfile" TEXT,
	"action" TEXT,
	"reason" TEXT
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'walarch_expire_wrapper';

REVOKE ALL ON FUNCTION walarch_expire(integer, text, interval, boolean) FROM PUBLIC;
