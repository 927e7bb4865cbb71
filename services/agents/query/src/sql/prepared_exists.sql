-- Whether this session has a prepared statement of that name.
SELECT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = $1)
