-- Every index of the user tables of the current database with its key
-- columns ('' for an expression), kind, validity, size and use since the
-- statistics were reset, and the writes its table took (each one also
-- maintains the index). Only a plain B-tree (no predicate) is compared
-- with others for duplicates.
SELECT n.nspname || '.' || ic.relname AS name,
       n.nspname || '.' || c.relname AS table_name,
       ARRAY(SELECT coalesce(a.attname::text, '')
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE k.ord <= i.indnkeyatts
             ORDER BY k.ord) AS columns,
       i.indisunique AS is_unique,
       i.indisprimary AS is_primary,
       i.indisvalid AS is_valid,
       pg_relation_size(i.indexrelid)::int8 AS size_bytes,
       coalesce(s.idx_scan, 0)::int8 AS scans,
       coalesce(t.n_tup_ins + t.n_tup_upd + t.n_tup_del, 0)::int8 AS table_writes,
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) AS backs_constraint,
       am.amname = 'btree' AND i.indpred IS NULL AS plain_btree
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
LEFT JOIN pg_stat_user_tables t ON t.relid = c.oid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1
LIMIT $1
