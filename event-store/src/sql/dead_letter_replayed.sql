UPDATE dead_letters SET replayed_at = now() WHERE id = $1
