/** What a request says about its caller: the request id it brought, and its address. */
import { randomUUID } from 'crypto';
import type { IncomingMessage } from 'http';
import { isIP } from 'net';

/** A caller's X-Request-Id is kept when it is a plain token: 1 to 128 of these characters. */
export const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** The caller's X-Request-Id when it is a sane token, otherwise a new UUID. */
export function requestIdFor(request: IncomingMessage): string {
  const given = request.headers['x-request-id'];
  const value = Array.isArray(given) ? undefined : given?.trim();
  return value && REQUEST_ID_PATTERN.test(value) ? value : randomUUID();
}

/**
 * The caller's IP address for the log line. Behind Cloud Run's front end the socket peer is
 * Google's proxy; the front end appends the address it received the request from to
 * X-Forwarded-For (after whatever the caller sent, which anyone can forge), so the last valid
 * entry is the one to believe. Without the front end (local runs) the header is the caller's own
 * word and the socket peer is the truth.
 */
export function remoteIpFor(request: IncomingMessage, behindFrontEnd: boolean): string | undefined {
  if (behindFrontEnd) {
    const header = request.headers['x-forwarded-for'];
    const joined = Array.isArray(header) ? header.join(',') : header;
    const last = joined
      ?.split(',')
      .map((part) => part.trim())
      .filter(Boolean)
      .pop();
    if (last && isIP(last)) return last;
  }
  return request.socket?.remoteAddress;
}
