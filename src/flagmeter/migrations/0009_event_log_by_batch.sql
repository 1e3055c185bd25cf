-- Raw events, the audit log, are stored one row per counted batch: the batch's columns as arrays
-- (`event_log`), where `events` stored a row per event. A row per event cost PostgreSQL a heap tuple,
-- its WAL record and, every ~80 events, a new 8 KB page for each counted event: ~30 % of the counting
-- backend's CPU (docs/performance.md, issue 15's ninth pass). A batch's arrays are one row whatever
-- its size, compressed with lz4 out of line. Nothing read raw events by key before either (0003): they
-- are read in bulk, and `events` stays as a view with the columns it had, one row per event.
--
-- The log is partitioned by month of `counted_at` (the worker's clock when it counted the batch, which
-- follows `received_at` by the stream's lag), so retention is still a DROP of whole months
-- (`flagmeter prune`). Rows from before this migration keep their months: they become batches of up
-- to 4,000 events in received order, `counted_at` the first of their `received_at`.

ALTER TABLE events RENAME TO events_before_0009;

CREATE TABLE event_log (
    counted_at   timestamptz NOT NULL,
    tenant_ids   text[] COMPRESSION lz4 NOT NULL,
    event_ids    text[] COMPRESSION lz4 NOT NULL,
    features     text[] COMPRESSION lz4 NOT NULL,
    tokens       bigint[] COMPRESSION lz4 NOT NULL,
    occurred_ms  bigint[] COMPRESSION lz4 NOT NULL,   -- epoch milliseconds, as the worker counts them
    received_ms  bigint[] COMPRESSION lz4 NOT NULL
) PARTITION BY RANGE (counted_at);
-- Safety net only: monthly partitions are created months ahead by migrate and the worker.
CREATE TABLE event_log_default PARTITION OF event_log DEFAULT;

CREATE VIEW events AS
SELECT e.tenant_id, e.event_id, e.feature, e.tokens,
       to_timestamp(e.occurred_ms / 1000::float8) AS occurred_at,
       to_timestamp(e.received_ms / 1000::float8) AS received_at,
       l.counted_at
FROM event_log AS l,
     unnest(l.tenant_ids, l.event_ids, l.features, l.tokens, l.occurred_ms, l.received_ms)
         AS e(tenant_id, event_id, feature, tokens, occurred_ms, received_ms);

-- A worker from before this migration inserts into `events` a row per event, as it did: during a rolling
-- upgrade it goes on counting, each of its events a batch of one in the log (counted_at its received_at).
CREATE FUNCTION flagmeter_event_into_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_log (counted_at, tenant_ids, event_ids, features, tokens, occurred_ms, received_ms)
    VALUES (NEW.received_at, ARRAY[NEW.tenant_id], ARRAY[NEW.event_id], ARRAY[NEW.feature], ARRAY[NEW.tokens],
            ARRAY[(extract(epoch FROM NEW.occurred_at) * 1000)::bigint],
            ARRAY[(extract(epoch FROM NEW.received_at) * 1000)::bigint]);
    RETURN NEW;
END $$;
CREATE TRIGGER events_into_log INSTEAD OF INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION flagmeter_event_into_log();

-- One month's partition, from its first day (UTC).
CREATE FUNCTION flagmeter_ensure_event_month(month_start date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    part text := 'event_log_' || to_char(month_start, 'YYYY_MM');
BEGIN
    IF to_regclass(part) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF event_log FOR VALUES FROM (%L) TO (%L)',
            part,
            (month_start::timestamp AT TIME ZONE 'UTC'),
            ((month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
    END IF;
END $$;

DROP FUNCTION flagmeter_ensure_event_partitions(integer, integer, timestamptz);
CREATE FUNCTION flagmeter_ensure_event_partitions(
    months_back integer, months_ahead integer, anchor timestamptz DEFAULT now()
)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    first_month date := date_trunc('month', anchor AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('flagmeter_event_partitions'));
    FOR i IN -months_back .. months_ahead LOOP
        PERFORM flagmeter_ensure_event_month((first_month + make_interval(months => i))::date);
    END LOOP;
END $$;

-- The rows of the old table, in batches of 4,000 in received order, each in its first event's month.
SELECT flagmeter_ensure_event_month(month)
FROM (SELECT DISTINCT date_trunc('month', received_at AT TIME ZONE 'UTC')::date AS month
      FROM events_before_0009) AS months;
INSERT INTO event_log (counted_at, tenant_ids, event_ids, features, tokens, occurred_ms, received_ms)
SELECT min(received_at),
       array_agg(tenant_id ORDER BY n), array_agg(event_id ORDER BY n), array_agg(feature ORDER BY n),
       array_agg(tokens ORDER BY n),
       array_agg((extract(epoch FROM occurred_at) * 1000)::bigint ORDER BY n),
       array_agg((extract(epoch FROM received_at) * 1000)::bigint ORDER BY n)
FROM (SELECT *, row_number() OVER (ORDER BY received_at, tenant_id, event_id) - 1 AS n
      FROM events_before_0009) AS numbered
GROUP BY n / 4000;
DROP TABLE events_before_0009;  -- and its partitions
