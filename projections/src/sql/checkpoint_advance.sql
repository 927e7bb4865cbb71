-- An idle runner moves its checkpoint past events that were not of its
-- types, fenced like a batch: only from where it last saw it, and only
-- while the generation is running.
UPDATE projection_generations
SET transaction_id = $3::text::xid8, global_position = $4, updated_at = now()
WHERE projection = $1 AND generation = $2
  AND transaction_id = $5::text::xid8 AND global_position = $6
  AND status <> 'retired' AND error IS NULL
