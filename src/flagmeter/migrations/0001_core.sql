-- Core schema: tenants, keys, the event dedup ledger, partitioned events, rollups, period totals.

CREATE TABLE tenants (
    id             text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    monthly_quota  bigint NOT NULL CHECK (monthly_quota >= 0),
    billing_day    smallint NOT NULL DEFAULT 1 CHECK (billing_day BETWEEN 1 AND 31),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    key_hash    text NOT NULL UNIQUE,          -- sha256 hex of the key; the key itself is never stored
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE slack_webhooks (
    tenant_id  text PRIMARY KEY REFERENCES tenants (id),
    url        text NOT NULL,
    enabled    boolean NOT NULL DEFAULT true
);

-- The dedup ledger: (tenant_id, event_id) unique on its own, whatever partition the event lands in.
-- Kept longer than the 35-day acceptance window (pruned by received_at).
CREATE TABLE event_ids (
    tenant_id    text NOT NULL,
    event_id     text NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX event_ids_received ON event_ids (received_at);

CREATE TABLE events (
    tenant_id    text NOT NULL,
    event_id     text NOT NULL,
    feature      text NOT NULL,
    tokens       bigint NOT NULL,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
-- Safety net only: monthly partitions are created months ahead by migrate and the worker.
CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE TABLE rollups (
    tenant_id  text NOT NULL,
    feature    text NOT NULL,
    minute     timestamptz NOT NULL,
    tokens     bigint NOT NULL,
    events     integer NOT NULL,
    PRIMARY KEY (tenant_id, feature, minute)
);
CREATE INDEX rollups_tenant_minute ON rollups (tenant_id, minute);

-- Per-period totals, updated in the rollup transaction, so a usage read is a few indexed rows.
CREATE TABLE period_totals (
    tenant_id     text NOT NULL,
    period_start  timestamptz NOT NULL,
    feature       text NOT NULL,
    tokens        bigint NOT NULL,
    events        bigint NOT NULL,
    PRIMARY KEY (tenant_id, period_start, feature)
);

CREATE FUNCTION flagmeter_ensure_event_partitions(months_back integer, months_ahead integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    first_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
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

SELECT flagmeter_ensure_event_partitions(2, 3);
