-- A per-tenant version of what GET /v1/usage answers, bumped in the transaction of every change to that
-- answer (a counted batch, a PATCH) and read in the same statement as the period totals, so an API
-- process's cached answer is tagged with exactly the state it shows (see api/usage.py, UsageCache).
ALTER TABLE tenants ADD COLUMN usage_version bigint NOT NULL DEFAULT 0;
