/** Trace context from W3C `traceparent` or Google's `X-Cloud-Trace-Context`, for log correlation. */
import type { IncomingHttpHeaders } from 'http';
import type { Trace } from '../logging';

export function traceFromHeaders(headers: IncomingHttpHeaders): Trace | undefined {
  const traceparent = single(headers.traceparent);
  const w3c = traceparent && /^[\da-f]{2}-([\da-f]{32})-([\da-f]{16})-([\da-f]{2})$/i.exec(traceparent.trim());
  if (w3c && !/^0+$/.test(w3c[1])) {
    return { traceId: w3c[1].toLowerCase(), spanId: w3c[2].toLowerCase(), sampled: (parseInt(w3c[3], 16) & 1) === 1 };
  }
  const cloud = single(headers['x-cloud-trace-context']);
  const google = cloud && /^([\da-f]{32})(?:\/(\d+))?(?:;o=([01]))?/i.exec(cloud.trim());
  if (google) {
    const spanId = google[2] ? BigInt(google[2]).toString(16).padStart(16, '0').slice(-16) : undefined;
    return { traceId: google[1].toLowerCase(), spanId, sampled: google[3] === undefined ? undefined : google[3] === '1' };
  }
  return undefined;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
