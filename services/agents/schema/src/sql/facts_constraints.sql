-- Constraints; for a CHECK (col IS NOT NULL) the column, for a foreign key
-- the referenced table.
SELECT n.nspname AS schema, c.relname AS table, k.conname AS name, k.contype::text AS kind,
       k.convalidated AS validated,
       CASE WHEN k.contype = 'c' AND array_length(k.conkey, 1) = 1
                 AND pg_get_constraintdef(k.oid) ~ '^CHECK \(\(?[^ ()]+ IS NOT NULL\)?\)$'
            THEN (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = k.conrelid AND a.attnum = k.conkey[1])
       END AS not_null_column,
       CASE WHEN k.contype = 'f' THEN (
           SELECT format('%s.%s', rn.nspname, rc.relname)
           FROM pg_class rc JOIN pg_namespace rn ON rn.oid = rc.relnamespace
           WHERE rc.oid = k.confrelid)
       END AS references
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype IN ('c', 'f', 'u', 'p', 'x')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
ORDER BY n.nspname, c.relname, k.conname
LIMIT $1
