-- Due workflows, the most urgent first: high priority, then the earliest.
SELECT workflow_id, version, resend, extract(epoch FROM now() - created_at)::float8 AS age_s
FROM workflow_runs
WHERE next_due_ms <= $1 OR resend
ORDER BY priority DESC, next_due_ms
LIMIT $2
