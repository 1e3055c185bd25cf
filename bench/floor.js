// Drives bench/floor.py: one small event per request at a constant arrival rate (RATE, DURATION).
import http from 'k6/http';

export const options = {
  scenarios: {
    floor: {
      executor: 'constant-arrival-rate',
      rate: parseInt(__ENV.RATE, 10),
      timeUnit: '1s',
      duration: __ENV.DURATION,
      preAllocatedVUs: 100,
      maxVUs: 300,
    },
  },
  summaryTrendStats: ['med', 'p(95)', 'p(99)', 'max'],
};

const BODY = '{"id":"floor","feature":"chat","tokens":5}';
const PARAMS = { headers: { 'Content-Type': 'application/json', Authorization: 'Bearer fm_floor' } };

export default function () {
  http.post(`${__ENV.BASE_URL}/v1/events`, BODY, PARAMS);
}

export function handleSummary(data) {
  return { [`${__ENV.SUMMARY_DIR}/floor-summary.json`]: JSON.stringify(data) };
}
