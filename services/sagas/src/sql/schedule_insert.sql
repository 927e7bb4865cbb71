INSERT INTO schedule_runs (schedule_id) VALUES ($1) ON CONFLICT (schedule_id) DO NOTHING
