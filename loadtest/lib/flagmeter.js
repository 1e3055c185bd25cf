// Shared by load.js and batch.js: configuration from the environment, the tenants a run posts for,
// the POST /v1/events call that records what the service accepted, and the end-of-test summary files.
// Every accepted event and token is counted here so verify.py can prove none was lost or double counted.
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import { textSummary } from './summary.js';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || __ENV.FLAGMETER_ADMIN_TOKEN || '';
const FEATURES = ['chat', 'embed', 'summarize', 'classify', 'translate', 'code.complete'];

export const acceptedEvents = new Counter('flagmeter_accepted_events');
export const acceptedTokens = new Counter('flagmeter_accepted_tokens');
export const rejectedEvents = new Counter('flagmeter_rejected_events');
// A request that timed out or failed with a 5xx other than 503 may or may not have been accepted.
export const uncertainEvents = new Counter('flagmeter_uncertain_events');
export const uncertainTokens = new Counter('flagmeter_uncertain_tokens');

export function envInt(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = parseInt(raw, 10);
  if (Number.isNaN(value)) throw new Error(`${name} must be an integer, got ${raw}`);
  return value;
}

// One constant-arrival-rate scenario; RATE, DURATION, VUS and MAX_VUS come from the environment.
export function arrivalScenario(defaultRate, defaultVus) {
  const vus = envInt('VUS', defaultVus);
  return {
    executor: 'constant-arrival-rate',
    rate: envInt('RATE', defaultRate),
    timeUnit: '1s',
    duration: __ENV.DURATION || '30s',
    preAllocatedVUs: vus,
    maxVUs: envInt('MAX_VUS', vus * 4),
  };
}

export const summaryTrendStats = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

// Thresholds every run shares: under 1 % failed requests, no dropped iterations (the generator kept up),
// no request of unknown outcome, and the scenario's latency limits (measured on its requests only, not setup's).
export function runThresholds(scenario, latencyLimits) {
  return {
    [`http_req_failed{scenario:${scenario}}`]: ['rate<0.01'],
    [`http_req_duration{scenario:${scenario}}`]: latencyLimits,
    dropped_iterations: ['count==0'],
    flagmeter_uncertain_events: ['count==0'],
  };
}

export function authHeaders(key) {
  return { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' };
}

// TENANTS="id=key,id=key" (the keys `flagmeter seed` prints), otherwise fresh tenants made with ADMIN_TOKEN.
function tenantsFromEnv() {
  return (__ENV.TENANTS || '')
    .split(',')
    .map((pair) => pair.trim())
    .filter((pair) => pair !== '')
    .map((pair) => {
      const at = pair.indexOf('=');
      if (at < 1) throw new Error(`TENANTS entries are id=key, got ${pair}`);
      return { id: pair.slice(0, at), key: pair.slice(at + 1) };
    });
}

function createTenant(id) {
  const res = http.post(
    `${BASE_URL}/v1/tenants`,
    JSON.stringify({ id, name: `k6 ${id}`, monthly_quota: 1e15 }),
    { headers: authHeaders(ADMIN_TOKEN), tags: { name: 'setup' } },
  );
  if (res.status !== 201) throw new Error(`POST /v1/tenants ${id}: ${res.status} ${res.body}`);
  return { id, key: res.json('api_key') };
}

// Usage and event count of the tenant's current period, so the check compares only this run's events.
export function readCounts(tenant) {
  const params = { headers: authHeaders(tenant.key), tags: { name: 'setup' } };
  const usage = http.get(`${BASE_URL}/v1/usage/${tenant.id}`, params);
  if (usage.status !== 200) throw new Error(`GET /v1/usage/${tenant.id}: ${usage.status} ${usage.body}`);
  const series = http.get(`${BASE_URL}/v1/usage/${tenant.id}/series?window=day`, params);
  if (series.status !== 200) throw new Error(`GET usage series ${tenant.id}: ${series.status} ${series.body}`);
  const events = series.json('rows').reduce((sum, row) => sum + row.events, 0);
  return { used: usage.json('used'), events };
}

export function setupRun() {
  const run = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  let tenants = tenantsFromEnv();
  if (tenants.length === 0) {
    if (!ADMIN_TOKEN) throw new Error('set TENANTS=id=key,... (flagmeter seed prints them) or ADMIN_TOKEN');
    const count = envInt('TENANT_COUNT', 3);
    tenants = [];
    for (let i = 0; i < count; i++) tenants.push(createTenant(`k6-${run}-${i}`));
  }
  for (const tenant of tenants) tenant.baseline = readCounts(tenant);
  return { base_url: BASE_URL, run, tenants, started_at: new Date().toISOString() };
}

export function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

export function randomFeature() {
  return pick(FEATURES);
}

export function randomTokens() {
  return 1 + Math.floor(Math.random() * 1000);
}

// Unique across runs (run id), VUs and iterations, so no event of this run is a duplicate of another.
export function eventId(data, index) {
  return `${data.run}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}-${index}`;
}

function sum(numbers) {
  return numbers.reduce((total, n) => total + n, 0);
}

// POST /v1/events with `body` (one event or an array) whose events carry `tokens` (one number per event,
// in order), and record what the answer says was accepted.
export function postEvents(tenant, tokens, body) {
  const res = http.post(`${BASE_URL}/v1/events`, body, {
    headers: authHeaders(tenant.key),
    tags: { name: 'POST /v1/events', endpoint: 'events' },
  });
  if (res.status === 202 && !body.startsWith('[')) {
    // A single-object body answers the event's own status: 202 means it was accepted.
    acceptedEvents.add(1);
    acceptedTokens.add(tokens[0]);
  } else if (res.status === 202) {
    const answer = res.json();
    const rejected = answer.rejected || [];
    acceptedEvents.add(answer.accepted);
    acceptedTokens.add(sum(tokens) - sum(rejected.map((r) => tokens[r.index])));
    rejectedEvents.add(rejected.length);
  } else if (res.status === 0 || (res.status >= 500 && res.status !== 503)) {
    uncertainEvents.add(tokens.length);
    uncertainTokens.add(sum(tokens));
  } else {
    rejectedEvents.add(tokens.length);
  }
  return res;
}

export function getUsage(tenant) {
  return http.get(`${BASE_URL}/v1/usage/${tenant.id}`, {
    headers: authHeaders(tenant.key),
    tags: { name: 'GET /v1/usage/{tenant}', endpoint: 'usage' },
  });
}

// handleSummary body: JSON for machines (verify.py, bench/run.py), text for people, text on stdout.
export function writeSummary(data, name) {
  const dir = (__ENV.SUMMARY_DIR || '.').replace(/\/+$/, '');
  const text = textSummary(data, name);
  return {
    stdout: text,
    [`${dir}/${name}-summary.json`]: JSON.stringify(data, null, 1),
    [`${dir}/${name}-summary.txt`]: text,
  };
}
