-- Every unfinished workflow, a page at a time (keyset on the id).
SELECT workflow_id, extract(epoch FROM now() - created_at)::float8 AS age_s
FROM workflow_runs
WHERE workflow_id > $1
ORDER BY workflow_id
LIMIT $2
