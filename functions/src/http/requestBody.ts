/**
 * Our own bounded reading of request bodies.
 *
 * The Functions Framework's body parsers buffer up to 1 GB before any handler runs. Node publishes
 * every request on the `http.server.request.start` diagnostics channel before the framework sees
 * it; there we move the body headers aside so those parsers skip the body, and the handler reads
 * it here with REQUEST_MAX_BYTES as the cap (a declared Content-Length over the cap is refused
 * without reading a byte).
 */
import * as diagnosticsChannel from 'diagnostics_channel';
import type { IncomingMessage } from 'http';
import { ApiError } from '../errors';

interface BodyFraming {
  contentLength?: string;
  transferEncoding?: string;
}

const framing = new WeakMap<IncomingMessage, BodyFraming>();
let installed = false;

export function installBodyInterception(): void {
  if (installed) return;
  installed = true;
  diagnosticsChannel.subscribe('http.server.request.start', (message) => {
    const request = (message as { request: IncomingMessage }).request;
    framing.set(request, {
      contentLength: request.headers['content-length'],
      transferEncoding: request.headers['transfer-encoding'],
    });
    delete request.headers['content-length'];
    delete request.headers['transfer-encoding'];
  });
}

export function declaredLength(request: IncomingMessage): number | undefined {
  const raw = framing.get(request)?.contentLength;
  return raw === undefined ? undefined : Number(raw);
}

/** Reads the whole body, refusing (413) as soon as it is known to exceed maxBytes. */
export function readBody(request: IncomingMessage, maxBytes: number): Promise<Buffer> {
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
