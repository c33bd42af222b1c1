CREATE VIEW walarch_stat_archiver AS SELECT * FROM walarch_stats();

-- Reading statistics is for pg_monitor; resetting them, switching WAL,
-- verifying the archive and removing from it are superuser-only unless
-- granted.
REVOKE ALL ON FUNCTION walarch_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION walarch_stats() TO pg_monitor;
REVOKE ALL ON walarch_stat_archiver FROM PUBLIC;
GRANT SELECT ON walarch_stat_archiver TO pg_monitor;
REVOKE ALL ON FUNCTION walarch_stats_reset() FROM PUBLIC;
REVOKE ALL ON FUNCTION walarch_switch_wal(boolean, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION walarch_verify(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION walarch_expire(integer, text, interval, boolean) FROM PUBLIC;
