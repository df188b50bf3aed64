/**
 * The Unix socket warm children connect to (while still root, before confinement) for their
 * stdout, stderr and result streams. It lives in a root-only directory; after confinement a
 * child can neither reach it (Landlock) nor connect anywhere (seccomp). Each connection starts
 * with "<token> <stream>\n" and is handed to whoever waits for that token.
 */
import { promises as fs } from 'fs';
import * as net from 'net';
import * as path from 'path';
import { readLine } from './readLine';

export type StreamName = 'stdout' | 'stderr' | 'result';
const STREAMS: StreamName[] = ['stdout', 'stderr', 'result'];
const HEADER_MAX = 200;

export type ChildStreams = Record<StreamName, net.Socket>;

interface Waiting {
  streams: Partial<ChildStreams>;
  resolve(streams: ChildStreams): void;
}

export class ChannelServer {
  private readonly waiting = new Map<string, Waiting>();
  private server: net.Server | undefined;

  constructor(readonly socketPath: string) {}

  async start(): Promise<void> {
    const dir = path.dirname(this.socketPath);
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await fs.chmod(dir, 0o700);
    await fs.rm(this.socketPath, { force: true });
    this.server = net.createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.socketPath, () => resolve());
    });
    await fs.chmod(this.socketPath, 0o600);
  }

  /** Resolves with the three streams of the child announced under this token. */
  expect(token: string): Promise<ChildStreams> {
    return new Promise((resolve) => this.waiting.set(token, { streams: {}, resolve }));
  }

  forget(token: string): void {
    const entry = this.waiting.get(token);
    this.waiting.delete(token);
    for (const socket of Object.values(entry?.streams ?? {})) socket?.destroy();
  }

  private accept(socket: net.Socket): void {
    socket.on('error', () => socket.destroy());
    readLine(socket, HEADER_MAX).then(
      (header) => {
        const [token, stream] = header.split(' ');
        const entry = this.waiting.get(token);
        if (!entry || !STREAMS.includes(stream as StreamName) || entry.streams[stream as StreamName]) {
          socket.destroy();
          return;
        }
        entry.streams[stream as StreamName] = socket;
        if (STREAMS.every((name) => entry.streams[name])) {
          this.waiting.delete(token);
          entry.resolve(entry.streams as ChildStreams);
        }
      },
      () => socket.destroy(),
    );
  }
}
