-- Requests a replay; returns nothing when the id is unknown or the event
-- was already replayed.
UPDATE dead_letters
   SET replay_requested_at = now()
 WHERE id = $1 AND replayed_at IS NULL
RETURNING id
