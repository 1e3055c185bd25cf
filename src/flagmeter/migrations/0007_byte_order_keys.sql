-- The counting path's text keys compare as bytes (COLLATE "C"), whatever locale the cluster was created
-- with. Every batch groups and upserts rollups and totals by tenant and feature, and every counted event
-- inserts one key into the ledger's B-tree (0008); under a language locale (en_US.UTF-8, the official
-- postgres image's) each of those comparisons is a strcoll() call: ~50 % more PostgreSQL time per event.
-- Nothing needs a language's order here: tenant ids are ASCII slugs, features ASCII names, event ids
-- printable ASCII. The columns keep their type; PostgreSQL rebuilds their indexes. These tables are
-- small (rows per tenant, feature and minute or day); the ledger follows in a migration of its own, so
-- the usage reads these serve wait only for this one.
ALTER TABLE rollups
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN feature TYPE text COLLATE "C";
ALTER TABLE daily_totals
    ALTER COLUMN tenant_id TYPE text COLLATE "C";
ALTER TABLE period_totals
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN feature TYPE text COLLATE "C";
