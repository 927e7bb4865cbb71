-- Target databases the agents work on. The connection URL (which may hold
-- a password) lives only here; the events DatabaseRegistered/Removed on
-- stream database-<name> carry it masked.
CREATE TABLE target_databases (
    name text PRIMARY KEY,
    connection_url text NOT NULL,
    url_masked text NOT NULL,
    description text NOT NULL DEFAULT '',
    server_version text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);
