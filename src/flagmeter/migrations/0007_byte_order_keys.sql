-- The counting path's text keys compare as bytes (COLLATE "C"), whatever locale the cluster was created
-- with. Every counted event inserts one key into the ledger's B-tree, and every batch groups and
-- upserts rollups and totals by tenant and feature; under a language locale (en_US.UTF-8, the official
-- postgres image's) each of those comparisons is a strcoll() call. Nothing needs a language's order
-- here: tenant ids are ASCII slugs, features ASCII names, event ids printable ASCII.
-- The columns keep their type; PostgreSQL rebuilds their indexes (the ledger's takes a while on a big
-- one, and holds its table meanwhile: events wait in the stream).
ALTER TABLE event_ids
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN event_id TYPE text COLLATE "C";
ALTER TABLE rollups
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN feature TYPE text COLLATE "C";
ALTER TABLE daily_totals
    ALTER COLUMN tenant_id TYPE text COLLATE "C";
ALTER TABLE period_totals
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN feature TYPE text COLLATE "C";
