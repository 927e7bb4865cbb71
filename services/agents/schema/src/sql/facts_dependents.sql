-- What uses each user table or column, described by PostgreSQL; `own`
-- marks the table's own indexes, constraints, triggers and policies
-- (dropped with it, so not "still used" by anything else).
SELECT n.nspname, c.relname, a.attname,
       pg_describe_object(d.classid, d.objid, d.objsubid) AS dependent,
       coalesce(CASE
           WHEN d.classid = 'pg_constraint'::regclass
               THEN (SELECT k.conrelid = c.oid FROM pg_constraint k WHERE k.oid = d.objid)
           WHEN d.classid = 'pg_class'::regclass
               THEN (SELECT i.indrelid = c.oid FROM pg_index i WHERE i.indexrelid = d.objid)
           WHEN d.classid IN ('pg_trigger'::regclass, 'pg_policy'::regclass) THEN true
           WHEN d.classid = 'pg_rewrite'::regclass
               THEN (SELECT w.ev_class = c.oid FROM pg_rewrite w WHERE w.oid = d.objid)
       END, false) AS own
FROM pg_depend d
JOIN pg_class c ON d.refclassid = 'pg_class'::regclass AND c.oid = d.refobjid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON d.refobjsubid > 0 AND a.attrelid = c.oid AND a.attnum = d.refobjsubid
WHERE c.relkind IN ('r', 'p') AND d.deptype IN ('n', 'a')
  AND d.classid <> 'pg_type'::regclass
  AND NOT (d.classid = 'pg_class'::regclass AND d.objid = c.oid)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1, 2, 3, 4
LIMIT $1
