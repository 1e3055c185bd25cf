-- Quota checks (issue 12): absolute tokens per tenant and UTC day, kept in the counting transaction.
--
-- The worker mirrors the rows its batch touched into Redis (max-merged, see tally.py), and a Redis that
-- lost its figures is reloaded from here. Billing periods start at 00:00 UTC, so a period is a set of
-- whole days: a billing-day change regroups nothing here.

CREATE TABLE daily_totals (
    tenant_id  text NOT NULL,
    day        date NOT NULL,
    tokens     bigint NOT NULL,
    PRIMARY KEY (tenant_id, day)
);

-- What the rollups counted so far; SHARE keeps a running worker from counting into them meanwhile.
LOCK TABLE rollups IN SHARE MODE;
INSERT INTO daily_totals (tenant_id, day, tokens)
SELECT tenant_id, (minute AT TIME ZONE 'UTC')::date, sum(tokens) FROM rollups GROUP BY 1, 2;
