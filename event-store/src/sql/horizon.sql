-- The $all horizon: every transaction older than this one has committed or
-- aborted, so everything below it that will ever be visible is visible now.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS horizon
