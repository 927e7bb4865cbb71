-- The database's user tables, quoted as `schema.table`, with their size.
SELECT format('%I.%I', n.nspname, c.relname) AS table_name,
       pg_table_size(c.oid) AS bytes
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1
LIMIT $1
