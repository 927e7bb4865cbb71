-- Drops one hypothetical index of this session.
SELECT hypopg_drop_index($1::oid)
