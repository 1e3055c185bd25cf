// Ingest capacity: arrays of BATCH_MIN..BATCH_MAX events (default 100-1000) per POST /v1/events,
// RATE requests per second. Events per second = RATE x mean batch size (550 by default).
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e ADMIN_TOKEN=... -e RATE=60 -e DURATION=30s loadtest/batch.js
// Then: python loadtest/verify.py batch-summary.json
//
// Building 1000 events in JavaScript for every request would cost the generator more CPU than the
// service spends on them, so each VU builds TEMPLATES random batch bodies once, with an id placeholder,
// and each request takes one and puts its own unique id prefix in (one native string replace).
import { check } from 'k6';
import exec from 'k6/execution';
import {
  arrivalScenario, envInt, pick, postEvents, randomFeature, randomTokens, runThresholds, setupRun,
  summaryTrendStats, writeSummary,
} from './lib/flagmeter.js';

const BATCH_MIN = envInt('BATCH_MIN', 100);
const BATCH_MAX = envInt('BATCH_MAX', 1000);
const TEMPLATES = envInt('TEMPLATES', 16);
const ID_PLACEHOLDER = '"id":"@';

export const options = {
  scenarios: { batch: arrivalScenario(20, 20) },
  summaryTrendStats,
  thresholds: runThresholds('batch', [`p(99)<${envInt('P99_MS', 1000)}`]),
};

export function setup() {
  if (BATCH_MIN < 1 || BATCH_MAX > 1000 || BATCH_MIN > BATCH_MAX) {
    throw new Error('need 1 <= BATCH_MIN <= BATCH_MAX <= 1000');
  }
  return setupRun();
}

function makeTemplate() {
  const size = BATCH_MIN + Math.floor(Math.random() * (BATCH_MAX - BATCH_MIN + 1));
  const tokens = [];
  const parts = [];
  for (let i = 0; i < size; i++) {
    tokens.push(randomTokens());
    parts.push(`{${ID_PLACEHOLDER}-${i}","feature":"${randomFeature()}","tokens":${tokens[i]}}`);
  }
  return { size, tokens, body: `[${parts.join(',')}]` };
}

const templates = []; // module scope: one set per VU, built on its first iterations

export default function (data) {
  if (templates.length < TEMPLATES) templates.push(makeTemplate());
  const template = pick(templates);
  // Unique across runs, VUs and iterations: `<run>-<vu>-<iteration>-<index>`.
  const prefix = `"id":"${data.run}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const res = postEvents(pick(data.tenants), template.tokens, template.body.replaceAll(ID_PLACEHOLDER, prefix));
  check(res, { 'batch 202': (r) => r.status === 202 });
}

export function handleSummary(data) {
  return writeSummary(data, 'batch');
}
