-- The switch: this generation becomes the one the view shows (the caller
-- retired the previous live one in the same transaction).
UPDATE projection_generations SET status = 'live', caught_up_at = coalesce(caught_up_at, now()), updated_at = now()
WHERE projection = $1 AND generation = $2
