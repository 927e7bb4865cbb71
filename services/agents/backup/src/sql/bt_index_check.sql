-- amcheck: the index's structure, and that every heap tuple is in it.
SELECT bt_index_check($1::regclass, true)::text
