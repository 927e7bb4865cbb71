DELETE FROM schedule_runs WHERE schedule_id = $1
