-- walarch_ext 0.1.0 -> 0.2.0
--
-- walarch_stats() gains ten columns (last_transfer_ms, mean_transfer_ms,
-- bytes_in_flight, stored_bytes, for walarch.max_backlog dropped_count,
-- dropped_bytes, last_dropped_wal, last_dropped_time, and compressed_count,
-- encrypted_count): the function and the view over it are
-- recreated, keeping the privileges granted on them. walarch_expire() is new. The library's
-- shared-memory layout and its statistics file format changed too: the new library takes effect only after a server
-- restart (it is in shared_preload_libraries), and a statistics file of
-- 0.1.0 is discarded at that start with a LOG line.
\echo Use "ALTER EXTENSION walarch_ext UPDATE TO '0.2.0'" to load this file. \quit

-- The function's result type changes, so it and the view over it are
-- dropped and created again; what an administrator granted or revoked on
-- them since 0.1.0 is re-applied on top of the new defaults.
DO $upgrade$
DECLARE
	fn_acl aclitem[] := (SELECT proacl FROM pg_proc WHERE oid = 'walarch_stats()'::regprocedure);
	view_acl aclitem[] := (SELECT relacl FROM pg_class WHERE oid = 'walarch_stat_archiver'::regclass);
	fn_init aclitem[];
	view_init aclitem[];
	r record;
BEGIN
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
		"stored_bytes" bigint,
		"dropped_count" bigint,
		"dropped_bytes" bigint,
		"last_dropped_wal" TEXT,
		"last_dropped_time" timestamp with time zone,
		"compressed_count" bigint,
		"encrypted_count" bigint
	)
	STRICT VOLATILE PARALLEL SAFE
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'walarch_stats_wrapper';

	CREATE VIEW walarch_stat_archiver AS SELECT * FROM walarch_stats();

	REVOKE ALL ON FUNCTION walarch_stats() FROM PUBLIC;
	GRANT EXECUTE ON FUNCTION walarch_stats() TO pg_monitor;
	REVOKE ALL ON walarch_stat_archiver FROM PUBLIC;
	GRANT SELECT ON walarch_stat_archiver TO pg_monitor;
	-- The extension's initial privileges, as a fresh install records them.
	fn_init := (SELECT initprivs FROM pg_init_privs
	            WHERE classoid = 'pg_proc'::regclass AND objsubid = 0
	              AND objoid = 'walarch_stats()'::regprocedure);
	view_init := (SELECT initprivs FROM pg_init_privs
	              WHERE classoid = 'pg_class'::regclass AND objsubid = 0
	                AND objoid = 'walarch_stat_archiver'::regclass);

	-- Grants (not the owner's own entries) that differ from the defaults
	-- just set: added where the administrator granted, removed where they
	-- revoked. NULL is the built-in default: nothing was ever changed.
	FOR r IN
		SELECT 'FUNCTION walarch_stats()' AS obj, d.*
		FROM (SELECT a.grantee, a.privilege_type, a.is_grantable
		      FROM aclexplode(fn_acl) a WHERE a.grantor <> a.grantee) d
		WHERE fn_acl IS NOT NULL
		UNION ALL
		SELECT 'TABLE walarch_stat_archiver', d.*
		FROM (SELECT a.grantee, a.privilege_type, a.is_grantable
		      FROM aclexplode(view_acl) a WHERE a.grantor <> a.grantee) d
		WHERE view_acl IS NOT NULL
	LOOP
		EXECUTE format('GRANT %s ON %s TO %s%s', r.privilege_type, r.obj,
			CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END,
			CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
	END LOOP;
	FOR r IN
		SELECT 'FUNCTION walarch_stats()' AS obj, a.grantee, a.privilege_type
		FROM pg_proc p, aclexplode(p.proacl) a
		WHERE p.oid = 'walarch_stats()'::regprocedure AND a.grantor <> a.grantee
		  AND fn_acl IS NOT NULL
		  AND NOT EXISTS (SELECT FROM aclexplode(fn_acl) o
		                  WHERE o.grantee = a.grantee AND o.privilege_type = a.privilege_type)
		UNION ALL
		SELECT 'TABLE walarch_stat_archiver', a.grantee, a.privilege_type
		FROM pg_class c, aclexplode(c.relacl) a
		WHERE c.oid = 'walarch_stat_archiver'::regclass AND a.grantor <> a.grantee
		  AND view_acl IS NOT NULL
		  AND NOT EXISTS (SELECT FROM aclexplode(view_acl) o
		                  WHERE o.grantee = a.grantee AND o.privilege_type = a.privilege_type)
	LOOP
		EXECUTE format('REVOKE %s ON %s FROM %s', r.privilege_type, r.obj,
			CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
	END LOOP;

	-- Run from an extension script, those GRANTs and REVOKEs were also
	-- recorded as the extension's initial privileges; they are the
	-- administrator's: put the initial ones back, so that pg_dump still
	-- dumps them and (PostgreSQL 17+, where roles named in initial
	-- privileges are shared dependencies 'i') the roles can be dropped once
	-- revoked.
	UPDATE pg_init_privs SET initprivs = fn_init
	WHERE classoid = 'pg_proc'::regclass AND objsubid = 0
	  AND objoid = 'walarch_stats()'::regprocedure;
	UPDATE pg_init_privs SET initprivs = view_init
	WHERE classoid = 'pg_class'::regclass AND objsubid = 0
	  AND objoid = 'walarch_stat_archiver'::regclass;
	DELETE FROM pg_shdepend d
	WHERE d.deptype = 'i' AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
	  AND ((d.classid = 'pg_proc'::regclass AND d.objid = 'walarch_stats()'::regprocedure
	        AND d.refobjid NOT IN (SELECT a.grantee FROM aclexplode(fn_init) a))
	    OR (d.classid = 'pg_class'::regclass AND d.objid = 'walarch_stat_archiver'::regclass
	        AND d.refobjid NOT IN (SELECT a.grantee FROM aclexplode(view_init) a)));
END
$upgrade$;

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
