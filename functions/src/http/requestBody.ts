/**
 * Our own bounded reading of request bodies, for this function's requests only.
 *
 * The Functions Framework's body parsers buffer up to 1 GB before any handler runs. Node publishes
 * every request on the `http.server.request.start` diagnostics channel before the framework sees
 * it; there, for the requests a handler has claimed (its own routes: see app.ts), we move the body
 * headers aside so those parsers skip the body, and the handler reads it here with
 * REQUEST_MAX_BYTES as the cap (a declared Content-Length over the cap is refused without reading
 * a byte). Every other request in the process, another function's included, is left exactly as it
 * came, so its parsed `req.body` is untouched.
 *
 * Nothing is subscribed until a handler claims requests (on creation, not on import), and the
 * subscription ends when the last claim is released.
 */
import * as diagnosticsChannel from 'diagnostics_channel';
import type { IncomingMessage } from 'http';
import { ApiError } from '../errors';

interface BodyFraming {
  contentLength?: string;
  transferEncoding?: string;
}

/** Decides, from the request line alone, whether a request belongs to a handler. */
export type RequestClaim = (request: IncomingMessage) => boolean;

const CHANNEL = 'http.server.request.start';
const framing = new WeakMap<IncomingMessage, BodyFraming>();
const bytesRead = new WeakMap<IncomingMessage, number>();
const claims = new Set<RequestClaim>();

function onRequestStart(message: unknown): void {
  const request = (message as { request: IncomingMessage }).request;
  if (framing.has(request)) return;
  for (const claim of claims) {
    if (!safely(claim, request)) continue;
    framing.set(request, {
      contentLength: request.headers['content-length'],
      transferEncoding: request.headers['transfer-encoding'],
    });
    delete request.headers['content-length'];
    delete request.headers['transfer-encoding'];
    return;
  }
}

/** A claim that throws (a malformed URL, say) claims nothing. */
function safely(claim: RequestClaim, request: IncomingMessage): boolean {
  try {
    return claim(request);
  } catch {
    return false;
  }
}

/** Starts moving the body headers of the requests `claim` accepts aside; returns the release. */
export function claimRequestBodies(claim: RequestClaim): () => void {
  claims.add(claim);
  if (claims.size === 1) diagnosticsChannel.subscribe(CHANNEL, onRequestStart);
  return () => {
    if (claims.delete(claim) && claims.size === 0) diagnosticsChannel.unsubscribe(CHANNEL, onRequestStart);
  };
}

export function declaredLength(request: IncomingMessage): number | undefined {
  const raw = framing.get(request)?.contentLength;
  return raw === undefined ? undefined : Number(raw);
}

/** Bytes of body read for this request (for the log line), if it was read. */
export function bodyBytes(request: IncomingMessage): number | undefined {
  return bytesRead.get(request);
}

/** Reads the whole body, refusing (413) as soon as it is known to exceed maxBytes. */
export function readBody(request: IncomingMessage, maxBytes: number): Promise<Buffer> {
  if (!framing.has(request)) {
    // Not claimed in time (a handler created after the request arrived): the Functions Framework
    // has already read the body into req.rawBody, under its own limit. Apply ours to it.
    const parsed = (request as IncomingMessage & { rawBody?: unknown }).rawBody;
    if (Buffer.isBuffer(parsed) || request.readableEnded) {
      const body = Buffer.isBuffer(parsed) ? parsed : Buffer.alloc(0);
      if (body.length > maxBytes) return Promise.reject(tooLarge(maxBytes));
      bytesRead.set(request, body.length);
      return Promise.resolve(body);
    }
  }
  const declared = declaredLength(request);
  if (declared !== undefined && declared > maxBytes) {
    return Promise.reject(tooLarge(maxBytes));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received > maxBytes) {
        cleanup();
        request.pause();
        reject(tooLarge(maxBytes));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      bytesRead.set(request, received);
      resolve(Buffer.concat(chunks, received));
    };
    const onError = (error: Error) => {
      cleanup();
      reject(new ApiError('invalid_request', `the request body could not be read: ${error.message}`));
    };
    const cleanup = () => {
      request.off('data', onData);
      request.off('end', onEnd);
      request.off('error', onError);
    };
    request.on('data', onData);
    request.on('end', onEnd);
    request.on('error', onError);
  });
}

function tooLarge(maxBytes: number): ApiError {
  return new ApiError('payload_too_large', `the request body is larger than the limit of ${maxBytes} bytes`, { limit: maxBytes });
}
