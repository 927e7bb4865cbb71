DELETE FROM target_databases WHERE name = $1
