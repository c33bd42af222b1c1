-- Declared by hand: switch_lsn is a pg_lsn, which pgrx cannot express.
CREATE FUNCTION walarch_switch_wal("wait" boolean DEFAULT false, "timeout" interval DEFAULT '60s')
RETURNS TABLE (switch_lsn pg_lsn, walfile text, archived boolean)
VOLATILE STRICT PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'walarch_switch_wal_wrapper';
