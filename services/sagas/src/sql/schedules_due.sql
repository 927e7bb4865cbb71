SELECT schedule_id FROM schedule_runs WHERE next_due_ms <= $1 ORDER BY next_due_ms LIMIT $2
