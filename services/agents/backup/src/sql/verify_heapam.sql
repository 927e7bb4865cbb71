-- amcheck: corrupt tuples of a table's heap, described.
SELECT blkno, offnum, msg FROM verify_heapam($1::regclass) LIMIT 10
