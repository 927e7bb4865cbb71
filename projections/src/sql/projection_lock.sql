-- Serialises control operations (define, rebuild, reset, switch) on one
-- projection.
SELECT live_generation, paused FROM projections WHERE name = $1 FOR UPDATE
