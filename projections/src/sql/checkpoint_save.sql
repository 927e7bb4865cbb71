-- Written in the batch's own transaction, with its read-model rows.
UPDATE projection_generations
SET transaction_id = $3::text::xid8,
    global_position = $4,
    events_applied = events_applied + $5,
    last_event_at = coalesce($6, last_event_at),
    updated_at = now()
WHERE projection = $1 AND generation = $2
