-- Every schedule, a page at a time (keyset on the id).
SELECT schedule_id, extract(epoch FROM now() - created_at)::float8 AS age_s
FROM schedule_runs
WHERE schedule_id > $1
ORDER BY schedule_id
LIMIT $2
