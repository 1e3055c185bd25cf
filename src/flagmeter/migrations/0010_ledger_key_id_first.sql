-- The dedup ledger's key as (event_id, tenant_id): a key's neighbours in the B-tree share their tenant far
-- more often than their id, so with the id first most comparisons on the way down end at the first
-- column, one function call instead of two (a batch's ledger insert descends the tree once per event).
-- callgrind, replaying the counting statements of 20 batches of 4,000 on a 400,000-row ledger: 48,400 ->
-- 41,600 backend instructions per event (docs/performance.md, issue 15's tenth pass). Uniqueness is the
-- same pair; ON CONFLICT and the plain insert's unique violation go by any unique index, so a worker of
-- the release before counts on as before.
-- The new index is built before the old one is dropped, holding writes to the ledger meanwhile (the
-- worker waits, accepted events wait in the stream, reads go on), as 0008's rebuild did.
CREATE UNIQUE INDEX event_ids_id_tenant ON event_ids (event_id, tenant_id);
ALTER TABLE event_ids
    DROP CONSTRAINT event_ids_pkey,
    ADD CONSTRAINT event_ids_pkey PRIMARY KEY USING INDEX event_ids_id_tenant;
