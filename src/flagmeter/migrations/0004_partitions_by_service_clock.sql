-- Event partitions are made around the service's clock (flagmeter.clock), not the database's:
-- the worker passes its "now", so a stack whose clock is pinned to another day partitions for it.
DROP FUNCTION flagmeter_ensure_event_partitions(integer, integer);

CREATE FUNCTION flagmeter_ensure_event_partitions(
    months_back integer, months_ahead integer, anchor timestamptz DEFAULT now()
)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    first_month date := date_trunc('month', anchor AT TIME ZONE 'UTC')::date;
    month_start date;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('flagmeter_event_partitions'));
    FOR i IN -months_back .. months_ahead LOOP
        month_start := (first_month + make_interval(months => i))::date;
        part := 'events_' || to_char(month_start, 'YYYY_MM');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                part,
                (month_start::timestamp AT TIME ZONE 'UTC'),
                ((month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
        END IF;
    END LOOP;
END $$;
