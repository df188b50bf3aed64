/**
 * Reads one "\n"-terminated line from a socket and leaves the socket paused, with whatever
 * followed the line put back, for the next reader. Rejects when the socket ends first or the
 * line is longer than maxBytes (a peer that never says a line is not waited on forever).
 */
import type * as net from 'net';

export function readLine(socket: net.Socket, maxBytes: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      const newline = buffer.indexOf(0x0a);
      if (newline < 0) {
        if (buffer.length > maxBytes) finish(new Error(`no line within ${maxBytes} bytes`));
        return;
      }
      cleanup();
      socket.pause();
      const rest = buffer.subarray(newline + 1);
      if (rest.length) socket.unshift(rest);
      resolve(buffer.subarray(0, newline).toString('utf8'));
    };
    const onEnd = () => finish(new Error('the stream ended before a line'));
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
    };
    const finish = (error: Error) => {
      cleanup();
      reject(error);
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.resume();
  });
}
