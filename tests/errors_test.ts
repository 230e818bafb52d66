/**
 * @module
 * Errors that answer clients (lib/errors.ts) called directly: the one mapping from errors to
 * responses, which says the status and never an error's own message.
 */

import assert from "node:assert/strict";
import {
  BadRequestError,
  ConfigError,
  ContentTooLargeError,
  errorResponse,
  GatewayTimeoutError,
  HttpError,
  NoBackendError,
  RefusedError,
} from "../lib/errors.ts";

Deno.test("errorResponse() answers an HttpError with its status, reason phrase and headers", async () => {
  const cases: [HttpError, number, string][] = [
    [new BadRequestError("bad Host"), 400, "400 Bad Request\n"],
    [new ContentTooLargeError(10), 413, "413 Content Too Large\n"],
    [new GatewayTimeoutError(), 504, "504 Gateway Timeout\n"],
    [new RefusedError(429, "rate-limit"), 429, "429 Too Many Requests\n"],
  ];
  for (const [error, status, body] of cases) {
    const response = errorResponse(error);
    assert.equal(response.status, status);
    assert.equal(await response.text(), body);
    assert.equal(response.headers.get("content-type"), "text/plain; charset=utf-8");
    assert.equal(response.headers.get("cache-control"), "no-store");
  }
  const busy = errorResponse(new NoBackendError(3));
  assert.equal(busy.status, 503);
  assert.equal(busy.headers.get("retry-after"), "3");
  assert.equal(await busy.text(), "503 Service Unavailable\n");
});

Deno.test("errorResponse() answers any other error with 502, and no error's message reaches the body", async () => {
  const secret = "connect to http://10.0.0.7:8081 failed";
  for (const error of [new Error(secret), new TypeError(secret), secret, undefined]) {
    const response = errorResponse(error);
    assert.equal(response.status, 502);
    assert.equal(await response.text(), "502 Bad Gateway\n");
  }
  const told = errorResponse(new HttpError(502, secret));
  assert.ok(!(await told.text()).includes("10.0.0.7"));
  const odd = errorResponse(new HttpError(599, secret));
  assert.equal(await odd.text(), "599 Error\n", "a status without a reason phrase");
});

Deno.test("HttpError subclasses are named after themselves; ConfigError is not an HttpError", () => {
  assert.equal(new NoBackendError(1).name, "NoBackendError");
  assert.ok(new NoBackendError(1) instanceof HttpError);
  const config = new ConfigError("--port: 0 is out of range");
  assert.equal(config.name, "ConfigError");
  assert.ok(!(config instanceof HttpError));
});
