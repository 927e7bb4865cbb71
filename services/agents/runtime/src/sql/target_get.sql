SELECT name, connection_url, url_masked, description, server_version, registered_at
FROM target_databases
WHERE name = $1
