-- Where the server's WAL is, its version, and the database's real name.
SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text AS lsn,
       current_setting('server_version') AS server_version,
       current_database() AS dbname
