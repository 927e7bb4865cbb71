-- A table named by a user (`t`, `schema.t`, `"Quoted"`), quoted as
-- `schema.table`, with its size; no row when there is no such table.
SELECT format('%I.%I', n.nspname, c.relname) AS table_name,
       pg_table_size(c.oid) AS bytes
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
  AND c.relkind IN ('r', 'p')
