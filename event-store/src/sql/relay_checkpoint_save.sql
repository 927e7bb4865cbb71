INSERT INTO relay_checkpoints (relay, transaction_id, global_position)
VALUES ($1, $2::text::xid8, $3)
ON CONFLICT (relay) DO UPDATE
   SET transaction_id = EXCLUDED.transaction_id,
       global_position = EXCLUDED.global_position,
       updated_at = now()
 -- a checkpoint never moves backwards
 WHERE (relay_checkpoints.transaction_id, relay_checkpoints.global_position)
     < (EXCLUDED.transaction_id, EXCLUDED.global_position)
