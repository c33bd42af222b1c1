-- walarch_ext 0.1.0 -> 0.2.0
--
-- No SQL object changes: 0.2.0 restructures the library (one archive
-- protocol over pluggable destinations). Its shared-memory layout differs
-- from 0.1.0's, so the new library takes effect only after a server restart
-- (it is in shared_preload_libraries); the statistics file format is
-- unchanged ("walarch_ext stats 1") and is carried over.
\echo Use "ALTER EXTENSION walarch_ext UPDATE TO '0.2.0'" to load this file. \quit
