// Ingest capacity: arrays of BATCH_MIN..BATCH_MAX events (default 100-1000) per POST /v1/events,
// RATE requests per second. Events per second = RATE x mean batch size.
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e ADMIN_TOKEN=... -e RATE=60 -e DURATION=30s loadtest/batch.js
// Then: python loadtest/verify.py batch-summary.json
import { check } from 'k6';
import {
  arrivalScenario, envInt, eventId, pick, postEvents, randomFeature, randomTokens, runThresholds,
  setupRun, summaryTrendStats, writeSummary,
} from './lib/flagmeter.js';

const BATCH_MIN = envInt('BATCH_MIN', 100);
const BATCH_MAX = envInt('BATCH_MAX', 1000);

export const options = {
  scenarios: { batch: arrivalScenario(20, 20) },
  summaryTrendStats,
  thresholds: runThresholds('batch', [`p(99)<${envInt('P99_MS', 1000)}`]),
};

export function setup() {
  if (BATCH_MIN < 1 || BATCH_MAX > 1000 || BATCH_MIN > BATCH_MAX) throw new Error('need 1 <= BATCH_MIN <= BATCH_MAX <= 1000');
  return setupRun();
}

export default function (data) {
  const tenant = pick(data.tenants);
  const size = BATCH_MIN + Math.floor(Math.random() * (BATCH_MAX - BATCH_MIN + 1));
  const events = [];
  const parts = [];
  for (let i = 0; i < size; i++) {
    const event = { id: eventId(data, i), feature: randomFeature(), tokens: randomTokens() };
    events.push(event);
    // Hand-built JSON: JSON.stringify of 1000 objects per request costs the generator more CPU.
    parts.push(`{"id":"${event.id}","feature":"${event.feature}","tokens":${event.tokens}}`);
  }
  const res = postEvents(tenant, events, `[${parts.join(',')}]`);
  check(res, { 'batch 202': (r) => r.status === 202 && r.json('accepted') === size });
}

export function handleSummary(data) {
  return writeSummary(data, 'batch');
}
