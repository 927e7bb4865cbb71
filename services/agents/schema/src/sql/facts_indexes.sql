-- Indexes with their key columns ('' for an expression).
SELECT format('%s.%s', n.nspname, ix.relname), format('%s.%s', n.nspname, c.relname),
       ARRAY(SELECT coalesce(a.attname::text, '')
             FROM unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum AND k.attnum > 0
             ORDER BY k.ord) AS columns,
       i.indisunique, i.indisvalid
FROM pg_index i
JOIN pg_class ix ON ix.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1
LIMIT $1
