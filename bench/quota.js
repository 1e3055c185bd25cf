// Quota checks and reservations (issue 12) at a constant arrival rate (RATE, DURATION): half
// GET /v1/usage/{tenant}/check, half POST /v1/reservations of 1 token held 1 s (so holds stay few).
import http from 'k6/http';

export const options = {
  scenarios: {
    quota: {
      executor: 'constant-arrival-rate',
      rate: parseInt(__ENV.RATE, 10),
      timeUnit: '1s',
      duration: __ENV.DURATION,
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  // Thresholds that always pass, so the summary holds a latency series per endpoint.
  thresholds: {
    'http_req_duration{name:check}': ['max>=0'],
    'http_req_duration{name:reserve}': ['max>=0'],
  },
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

const HEADERS = { 'Content-Type': 'application/json', Authorization: `Bearer ${__ENV.KEY}` };
const CHECK_URL = `${__ENV.BASE_URL}/v1/usage/${__ENV.TENANT}/check?tokens=10`;
const RESERVE_URL = `${__ENV.BASE_URL}/v1/reservations`;
const HOLD = JSON.stringify({ tokens: 1, ttl_seconds: 1 });

export default function () {
  if (__ITER % 2 === 0) {
    http.get(CHECK_URL, { headers: HEADERS, tags: { name: 'check' } });
  } else {
    http.post(RESERVE_URL, HOLD, { headers: HEADERS, tags: { name: 'reserve' } });
  }
}

export function handleSummary(data) {
  return { [`${__ENV.SUMMARY_DIR}/quota-summary.json`]: JSON.stringify(data) };
}
