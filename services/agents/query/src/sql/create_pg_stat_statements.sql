-- pg_stat_statements is preloaded by the server; a database needs the extension created to see it.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements
