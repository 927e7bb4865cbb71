-- What depends on a table, or on one of its columns ($3 NULL: the table):
-- views and materialized views, foreign keys both ways, indexes, check
-- and other constraints, triggers, functions and procedures with SQL
-- bodies, policies, sequences owned by a column, and columns whose
-- generated expression uses it. One row per dependent: kind, name, the
-- table it belongs to, and a definition a person can read.
WITH target AS (
    SELECT c.oid AS relid,
           (SELECT a.attnum FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attname = $3 AND NOT a.attisdropped) AS attnum
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2
),
refs AS (
    SELECT d.classid, d.objid, d.objsubid, d.deptype
    FROM pg_depend d, target t
    WHERE d.refclassid = 'pg_class'::regclass
      AND d.refobjid = t.relid
      AND ($3::text IS NULL OR d.refobjsubid = t.attnum)
      AND d.deptype IN ('n', 'a')
)
SELECT DISTINCT kind, name, on_table, definition FROM (
    -- views (through their rewrite rule)
    SELECT CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END AS kind,
           format('%I.%I', vn.nspname, v.relname) AS name,
           format('%I.%I', vn.nspname, v.relname) AS on_table,
           pg_get_viewdef(v.oid, true) AS definition
    FROM refs r
    JOIN pg_rewrite w ON r.classid = 'pg_rewrite'::regclass AND w.oid = r.objid
    JOIN pg_class v ON v.oid = w.ev_class
    JOIN pg_namespace vn ON vn.oid = v.relnamespace, target t
    WHERE v.oid <> t.relid
    UNION ALL
    -- constraints of this or other tables (foreign keys referencing it included)
    SELECT CASE k.contype WHEN 'f' THEN 'foreign key' WHEN 'c' THEN 'check constraint'
                          WHEN 'u' THEN 'unique constraint' WHEN 'p' THEN 'primary key'
                          WHEN 'x' THEN 'exclusion constraint' ELSE 'constraint' END,
           k.conname,
           format('%I.%I', kn.nspname, kc.relname),
           pg_get_constraintdef(k.oid, true)
    FROM refs r
    JOIN pg_constraint k ON r.classid = 'pg_constraint'::regclass AND k.oid = r.objid
    JOIN pg_class kc ON kc.oid = k.conrelid
    JOIN pg_namespace kn ON kn.oid = kc.relnamespace
    UNION ALL
    -- indexes
    SELECT 'index', format('%I.%I', ixn.nspname, ix.relname),
           format('%I.%I', tn.nspname, tc.relname),
           pg_get_indexdef(ix.oid)
    FROM refs r
    JOIN pg_class ix ON r.classid = 'pg_class'::regclass AND ix.oid = r.objid AND ix.relkind IN ('i', 'I')
    JOIN pg_namespace ixn ON ixn.oid = ix.relnamespace
    JOIN pg_index i ON i.indexrelid = ix.oid
    JOIN pg_class tc ON tc.oid = i.indrelid
    JOIN pg_namespace tn ON tn.oid = tc.relnamespace
    UNION ALL
    -- triggers
    SELECT 'trigger', tg.tgname, format('%I.%I', tn.nspname, tc.relname), pg_get_triggerdef(tg.oid, true)
    FROM refs r
    JOIN pg_trigger tg ON r.classid = 'pg_trigger'::regclass AND tg.oid = r.objid AND NOT tg.tgisinternal
    JOIN pg_class tc ON tc.oid = tg.tgrelid
    JOIN pg_namespace tn ON tn.oid = tc.relnamespace
    UNION ALL
    -- functions and procedures (SQL-standard bodies are tracked)
    SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
           format('%I.%I(%s)', pn.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
           NULL, NULL
    FROM refs r
    JOIN pg_proc p ON r.classid = 'pg_proc'::regclass AND p.oid = r.objid
    JOIN pg_namespace pn ON pn.oid = p.pronamespace
    UNION ALL
    -- row-level security policies
    SELECT 'policy', po.polname, format('%I.%I', tn.nspname, tc.relname),
           pg_get_expr(po.polqual, po.polrelid)
    FROM refs r
    JOIN pg_policy po ON r.classid = 'pg_policy'::regclass AND po.oid = r.objid
    JOIN pg_class tc ON tc.oid = po.polrelid
    JOIN pg_namespace tn ON tn.oid = tc.relnamespace
    UNION ALL
    -- sequences owned by it, and columns generated from it
    SELECT CASE WHEN s.relkind = 'S' THEN 'sequence' ELSE 'generated column' END,
           format('%I.%I', sn.nspname, s.relname), NULL, NULL
    FROM refs r
    JOIN pg_class s ON r.classid = 'pg_class'::regclass AND s.oid = r.objid AND s.relkind = 'S'
    JOIN pg_namespace sn ON sn.oid = s.relnamespace
) dependents
ORDER BY kind, name
