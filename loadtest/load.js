// The proof of concept's traffic mix at a constant arrival rate:
// 80 % POST /v1/events (one event, random tenant and feature, 1-1000 tokens, client event id),
// 20 % GET /v1/usage/{tenant}.
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e ADMIN_TOKEN=... -e RATE=500 -e DURATION=30s loadtest/load.js
// Then: python loadtest/verify.py load-summary.json   (every accepted event must be counted)
import { check } from 'k6';
import {
  arrivalScenario, envInt, eventId, getUsage, pick, postEvents, randomFeature, randomTokens, runThresholds,
  setupRun, summaryTrendStats, writeSummary,
} from './lib/flagmeter.js';

const P95_MS = envInt('P95_MS', 100);
const P99_MS = envInt('P99_MS', 200);

export const options = {
  scenarios: { mix: arrivalScenario(200, 50) },
  summaryTrendStats,
  thresholds: {
    ...runThresholds('mix', [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`]),
    'http_req_duration{endpoint:events}': [`p(99)<${P99_MS}`],
    'http_req_duration{endpoint:usage}': [`p(99)<${P99_MS}`],
  },
};

export function setup() {
  return setupRun();
}

export default function (data) {
  const tenant = pick(data.tenants);
  if (Math.random() < 0.8) {
    const event = { id: eventId(data, 0), tenant: tenant.id, feature: randomFeature(), tokens: randomTokens() };
    const res = postEvents(tenant, [event.tokens], JSON.stringify(event));
    check(res, { 'event 202': (r) => r.status === 202 });
  } else {
    check(getUsage(tenant), { 'usage 200': (r) => r.status === 200 });
  }
}

export function handleSummary(data) {
  return writeSummary(data, 'load');
}
