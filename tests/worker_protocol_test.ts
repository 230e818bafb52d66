/**
 * @module
 * Unit tests of lib/worker_protocol.ts: how the Prometheus texts of several `--workers` threads
 * merge into one, and what a thread that is gone still contributes.
 */

import assert from "node:assert/strict";
import { countersOnly, mergeExpositions } from "../lib/worker_protocol.ts";

/** A Prometheus text written as a template: its lines, each ending in a newline. */
function exposition(lines: string): string {
  return lines.slice(1);
}

Deno.test("mergeExpositions() adds counters, histograms and in-flight; other gauges take the max", () => {
  const thread = (requests: number, inflight: number, up: number) =>
    exposition(`
# HELP lb_requests_total Requests.
# TYPE lb_requests_total counter
lb_requests_total{backend="http://a:1",code="2xx"} ${requests}
# HELP lb_request_duration_seconds Durations.
# TYPE lb_request_duration_seconds histogram
lb_request_duration_seconds_bucket{backend="http://a:1",le="+Inf"} ${requests}
lb_request_duration_seconds_sum{backend="http://a:1"} 0.5
lb_request_duration_seconds_count{backend="http://a:1"} ${requests}
# HELP lb_backend_inflight In flight.
# TYPE lb_backend_inflight gauge
lb_backend_inflight{backend="http://a:1"} ${inflight}
# HELP lb_backend_up Up.
# TYPE lb_backend_up gauge
lb_backend_up{backend="http://a:1"} ${up}
`);
  const merged = mergeExpositions([thread(3, 1, 1), thread(4, 2, 0)]);
  assert.equal(
    merged,
    exposition(`
# HELP lb_requests_total Requests.
# TYPE lb_requests_total counter
lb_requests_total{backend="http://a:1",code="2xx"} 7
# HELP lb_request_duration_seconds Durations.
# TYPE lb_request_duration_seconds histogram
lb_request_duration_seconds_bucket{backend="http://a:1",le="+Inf"} 7
lb_request_duration_seconds_sum{backend="http://a:1"} 1
lb_request_duration_seconds_count{backend="http://a:1"} 7
# HELP lb_backend_inflight In flight.
# TYPE lb_backend_inflight gauge
lb_backend_inflight{backend="http://a:1"} 3
# HELP lb_backend_up Up.
# TYPE lb_backend_up gauge
lb_backend_up{backend="http://a:1"} 1
`),
  );
});

Deno.test("mergeExpositions() keeps first-seen order, adds what one thread lacks, never sums a max gauge", () => {
  const a = exposition(`
# TYPE lb_a_total counter
lb_a_total 1
# TYPE lb_ejected gauge
lb_ejected{backend="x"} 1
lb_ejected{backend="y"} 0
`);
  const b = exposition(`
# TYPE lb_b_total counter
lb_b_total 2
# TYPE lb_ejected gauge
lb_ejected{backend="x"} 1
# TYPE lb_a_total counter
lb_a_total 5
lb_a_total{backend="y"} 1
`);
  assert.equal(
    mergeExpositions([a, b]),
    exposition(`
# TYPE lb_a_total counter
lb_a_total 6
lb_a_total{backend="y"} 1
# TYPE lb_ejected gauge
lb_ejected{backend="x"} 1
lb_ejected{backend="y"} 0
# TYPE lb_b_total counter
lb_b_total 2
`),
  );
});

Deno.test("mergeExpositions() sums the connection gauges, like in-flight", () => {
  const thread = (open: number, idle: number) =>
    exposition(`
# TYPE lb_backend_connections_open gauge
lb_backend_connections_open{backend="x"} ${open}
# TYPE lb_backend_connections_idle gauge
lb_backend_connections_idle{backend="x"} ${idle}
`);
  assert.equal(
    mergeExpositions([thread(2, 1), thread(3, 0)]),
    exposition(`
# TYPE lb_backend_connections_open gauge
lb_backend_connections_open{backend="x"} 5
# TYPE lb_backend_connections_idle gauge
lb_backend_connections_idle{backend="x"} 1
`),
  );
});

Deno.test("countersOnly() drops gauges, keeps counters and histograms for the merge", () => {
  const text = exposition(`
# HELP lb_requests_total Requests.
# TYPE lb_requests_total counter
lb_requests_total{code="2xx"} 3
# HELP lb_backend_inflight In flight.
# TYPE lb_backend_inflight gauge
lb_backend_inflight{backend="x"} 2
# TYPE lb_d_seconds histogram
lb_d_seconds_bucket{le="+Inf"} 3
lb_d_seconds_count 3
`);
  const kept = countersOnly(text);
  assert.doesNotMatch(kept, /inflight/);
  assert.equal(
    mergeExpositions([kept, text]),
    exposition(`
# HELP lb_requests_total Requests.
# TYPE lb_requests_total counter
lb_requests_total{code="2xx"} 6
# TYPE lb_d_seconds histogram
lb_d_seconds_bucket{le="+Inf"} 6
lb_d_seconds_count 6
# HELP lb_backend_inflight In flight.
# TYPE lb_backend_inflight gauge
lb_backend_inflight{backend="x"} 2
`),
  );
});
