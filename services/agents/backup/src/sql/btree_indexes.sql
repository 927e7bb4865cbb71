-- The B-tree indexes of user tables, for amcheck.
SELECT c.oid::regclass::text AS index_name
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
JOIN pg_am AS am ON am.oid = c.relam
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE am.amname = 'btree'
  AND i.indisvalid
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1
LIMIT $1
