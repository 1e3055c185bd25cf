-- Quota alerts: per-tenant thresholds, a signed generic webhook, and the outbox.
--
-- `alerts` is the decision, unique per (tenant, period, threshold) and written in the batch's own
-- transaction; `alert_deliveries` is the outbox (one row per alert and target) that the workers
-- drain; `alert_attempts` records every HTTP attempt.

ALTER TABLE tenants ADD COLUMN alert_thresholds smallint[] NOT NULL DEFAULT '{80,100}'
    CHECK (cardinality(alert_thresholds) <= 10 AND 1 <= ALL (alert_thresholds) AND 1000 >= ALL (alert_thresholds));

CREATE TABLE alert_webhooks (
    tenant_id  text PRIMARY KEY REFERENCES tenants (id),
    url        text NOT NULL,
    secret     text NOT NULL,              -- whsec_<base64 key>, Standard Webhooks
    enabled    boolean NOT NULL DEFAULT true
);

CREATE TABLE alerts (
    id            bigserial PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    threshold     smallint NOT NULL,
    used          bigint NOT NULL,
    quota         bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, period_start, threshold)
);
CREATE INDEX alerts_tenant_created ON alerts (tenant_id, created_at DESC);

CREATE TABLE alert_deliveries (
    id               bigserial PRIMARY KEY,
    alert_id         bigint NOT NULL REFERENCES alerts (id),
    target           text NOT NULL CHECK (target IN ('slack', 'webhook')),
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,          -- a worker is sending it; another may take it after this
    last_error       text,
    finished_at      timestamptz,
    UNIQUE (alert_id, target)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE alert_attempts (
    id            bigserial PRIMARY KEY,
    delivery_id   bigint NOT NULL REFERENCES alert_deliveries (id),
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    endpoint      text NOT NULL,           -- scheme://host:port only; Slack URLs embed a secret
    http_status   integer,
    outcome       text NOT NULL,           -- delivered | retry | failed | in_flight | interrupted
    error         text,
    duration_ms   integer NOT NULL
);
CREATE INDEX alert_attempts_delivery ON alert_attempts (delivery_id, attempted_at);
