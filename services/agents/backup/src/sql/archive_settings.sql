-- What physical backups need of a target: WAL archiving on, into the
-- repository, and WAL with enough detail; the data directory (readable by
-- superusers and pg_read_all_settings only) says who owns its files.
SELECT current_setting('archive_mode') AS archive_mode,
       current_setting('archive_command') AS archive_command,
       current_setting('wal_level') AS wal_level,
       pg_size_bytes(current_setting('wal_segment_size')) AS wal_segment_bytes,
       CASE WHEN pg_has_role('pg_read_all_settings', 'member')
            THEN current_setting('data_directory') END AS data_directory
