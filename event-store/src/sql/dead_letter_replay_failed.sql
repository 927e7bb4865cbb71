UPDATE dead_letters SET replay_requested_at = NULL, error = $2 WHERE id = $1
