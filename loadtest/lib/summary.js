// A plain-text end-of-test summary: the figures a maintainer reads first, then every threshold.
// Written here rather than imported from a remote library so a run needs nothing but the k6 binary.

function ms(value) {
  return value === undefined ? '-' : `${value.toFixed(1)}ms`;
}

function metric(data, name) {
  return data.metrics[name] ? data.metrics[name].values : undefined;
}

function latencyLine(label, values) {
  if (!values) return null;
  const stats = ['avg', 'med', 'p(95)', 'p(99)', 'max'].map((stat) => `${stat}=${ms(values[stat])}`);
  return `  ${label.padEnd(34)} ${stats.join(' ')}`;
}

function countLine(label, values) {
  if (!values) return `  ${label.padEnd(34)} 0`;
  const rate = values.rate === undefined ? '' : ` (${values.rate.toFixed(1)}/s)`;
  return `  ${label.padEnd(34)} ${values.count}${rate}`;
}

function failedLine(label, values) {
  return `  ${label.padEnd(34)} ${values ? (values.rate * 100).toFixed(3) : '0.000'}%`;
}

function thresholdLines(data) {
  const lines = [];
  for (const [name, m] of Object.entries(data.metrics)) {
    for (const [expr, result] of Object.entries(m.thresholds || {})) {
      lines.push(`  ${result.ok ? 'ok  ' : 'FAIL'} ${name}: ${expr}`);
    }
  }
  return lines.sort();
}

export function textSummary(data, name) {
  const seconds = data.state.testRunDurationMs / 1000;
  const lines = [
    `flagmeter ${name}: ${seconds.toFixed(1)}s against ${data.setup_data ? data.setup_data.base_url : '?'}`,
    countLine('requests', metric(data, 'http_reqs')),
    countLine('iterations', metric(data, 'iterations')),
    countLine('dropped iterations', metric(data, 'dropped_iterations')),
    failedLine('failed requests', metric(data, 'http_req_failed')),
    latencyLine('http_req_duration', metric(data, 'http_req_duration')),
  ];
  for (const key of Object.keys(data.metrics).sort()) {
    if (key.startsWith('http_req_duration{')) lines.push(latencyLine(key.slice(17), metric(data, key)));
    if (key.startsWith('http_req_failed{')) lines.push(failedLine(`failed ${key.slice(15)}`, metric(data, key)));
  }
  lines.push(
    countLine('events accepted', metric(data, 'flagmeter_accepted_events')),
    countLine('tokens accepted', metric(data, 'flagmeter_accepted_tokens')),
    countLine('events rejected', metric(data, 'flagmeter_rejected_events')),
    countLine('events uncertain (timeout/5xx)', metric(data, 'flagmeter_uncertain_events')),
    'thresholds:',
    ...thresholdLines(data),
  );
  return `${lines.filter((line) => line !== null).join('\n')}\n`;
}
