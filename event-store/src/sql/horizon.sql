-- The $all horizon (migrations/0010_horizon.sql): every transaction of this
-- database older than it has committed or aborted, so everything below it
-- that will ever be visible is visible now.
SELECT dbswarm_horizon()::text::int8 AS horizon
