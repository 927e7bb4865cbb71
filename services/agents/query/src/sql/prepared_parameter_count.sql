-- How many parameters a prepared statement of this session takes.
SELECT coalesce(array_length(parameter_types, 1), 0)::int8 FROM pg_prepared_statements WHERE name = $1
