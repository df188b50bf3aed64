/**
 * The Unix socket warm children connect to (while still privileged, before confinement) for
 * their stdout, stderr and result streams. It lives in a directory only its client uid can
 * enter: root in seccomp mode, the zygote's uid in nsjail mode (whose jail binds it read-only).
 * Once a child has its run's uid it can no longer reach it, and after confinement it can connect
 * nowhere (Landlock, seccomp). Each connection starts with "<token> <stream>\n" and is handed to
 * whoever waits for that token.
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

  constructor(
    readonly socketPath: string,
    /** Who connects (the zygote's children before they take their run's uid); root by default. */
    private readonly clientUid = 0,
  ) {}

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
    for (const entry of [dir, this.socketPath]) await fs.chown(entry, this.clientUid, this.clientUid);
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
