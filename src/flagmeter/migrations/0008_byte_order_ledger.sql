-- The dedup ledger's key compares as bytes too (see 0007). Its primary key is rebuilt, which on a large
-- ledger takes a while and holds the table meanwhile: the worker waits, accepted events wait in the
-- stream, and the API's reads (usage, quota checks) go on.
ALTER TABLE event_ids
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN event_id TYPE text COLLATE "C";
