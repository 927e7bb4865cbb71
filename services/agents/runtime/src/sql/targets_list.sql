SELECT name, connection_url, url_masked, description, server_version, registered_at
FROM target_databases
ORDER BY name
LIMIT $1
