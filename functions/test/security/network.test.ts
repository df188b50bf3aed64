/**
 * Network: no socket reaches anything — not the internet, not the metadata server (the service
 * account's tokens), not the service's own port, not host Unix sockets. Scripts never send a
 * packet to a non-loopback address even if the sandbox were broken: they first check that the
 * socket cannot be created and report a created socket as the failure instead of using it.
 */
import { spawn, type ChildProcess } from 'child_process';
import { promises as fs } from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { sandboxModes } from '../helpers/service';
import { attack, attackCase, py, SECURITY_LIMITS, startService, TRY, type RunningService } from './helpers';

const BLOCKED_SOCKET = py(
  TRY,
  'import socket',
  'def blocked(family, kind, proto=0):',
  '    """The socket cannot even be created; a created one is closed unused and reported."""',
  '    outcome = attempt(lambda: socket.socket(family, kind, proto).close())',
  '    return outcome',
);

describe.each(sandboxModes())('security: network in %s mode', (mode) => {
  let service: RunningService;
  let scratch: string;
  beforeAll(async () => {
    service = await startService(SECURITY_LIMITS, mode);
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'sec-net-'));
    await fs.chmod(scratch, 0o755);
  });
  afterAll(async () => {
    await service?.stop();
    await fs.rm(scratch, { recursive: true, force: true });
  });
  const c = (name: string, layer: Parameters<typeof attackCase>[2], body: () => Promise<void>) => attackCase('network', name, layer, mode, () => service, body);

  const socketCases: Array<[string, string]> = [
    ['TCP (AF_INET, SOCK_STREAM): internet and the metadata server 169.254.169.254', 'socket.AF_INET, socket.SOCK_STREAM'],
    ['UDP (AF_INET, SOCK_DGRAM): DNS servers, anything', 'socket.AF_INET, socket.SOCK_DGRAM'],
    ['IPv6 TCP (AF_INET6)', 'socket.AF_INET6, socket.SOCK_STREAM'],
    ['IPv6 UDP (AF_INET6)', 'socket.AF_INET6, socket.SOCK_DGRAM'],
    ['raw IP socket (ICMP)', 'socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP'],
    ['packet socket (AF_PACKET)', 'socket.AF_PACKET, socket.SOCK_RAW, 0'],
    ['netlink route socket (AF_NETLINK)', 'socket.AF_NETLINK, socket.SOCK_RAW, 0'],
    ['vsock / other families (AF_VSOCK, AF_ALG)', 'socket.AF_ALG, socket.SOCK_SEQPACKET, 0'],
  ];
  for (const [name, args] of socketCases) {
    c(`${name}: socket() refused`, 'seccomp (socket family)', async () => {
      const answer = await attack(service, py(BLOCKED_SOCKET, 'def main():', `    return blocked(${args})`));
      expect(answer.status).toBe(200);
      expect(answer.body.result).toMatchObject({ ok: false, errno: 'EAFNOSUPPORT' });
    });
  }

  c('DNS: resolving metadata.google.internal fails', 'seccomp (socket family)', async () => {
    const answer = await attack(
      service,
      py(
        BLOCKED_SOCKET,
        'def main():',
        '    udp = blocked(socket.AF_INET, socket.SOCK_DGRAM)',
        "    if udp['ok']:",
        "        return {'udp_socket_created': True}",
        "    return attempt(lambda: socket.getaddrinfo('metadata.google.internal', 80))",
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result).toMatchObject({ ok: false, error: 'gaierror' });
  });

  c('metadata server through urllib (token URL, Metadata-Flavor header)', 'seccomp (socket family)', async () => {
    const answer = await attack(
      service,
      py(
        BLOCKED_SOCKET,
        'import urllib.request',
        'def main():',
        "    if blocked(socket.AF_INET, socket.SOCK_STREAM)['ok']:",
        "        return {'tcp_socket_created': True}",
        "    url = 'http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token'",
        "    req = urllib.request.Request(url, headers={'Metadata-Flavor': 'Google'})",
        '    return attempt(lambda: urllib.request.urlopen(req, timeout=2).read())',
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result).toMatchObject({ ok: false, error: 'URLError' });
    expect(answer.text).not.toMatch(/access_token/);
  });

  c("the service's own port on loopback", { seccomp: 'seccomp (socket family)', nsjail: 'seccomp (socket family); network namespace' }, async () => {
    const port = Number(new URL(service.url).port);
    const answer = await attack(service, py(BLOCKED_SOCKET, 'def main(port):', "    return attempt(lambda: socket.create_connection(('127.0.0.1', port), timeout=1))"), { port });
    expect(answer.body.result).toMatchObject({ ok: false, errno: 'EAFNOSUPPORT' });
  });

  c('listening on a TCP port (offering a service)', 'seccomp (socket family)', async () => {
    const answer = await attack(service, py(BLOCKED_SOCKET, 'def main():', "    return attempt(lambda: socket.create_server(('0.0.0.0', 8099)))"));
    expect(answer.body.result).toMatchObject({ ok: false, errno: 'EAFNOSUPPORT' });
  });

  c(
    "the warm path's channel socket, where waiting children announce their streams",
    { seccomp: 'Landlock; 0700 root directory; seccomp (connect)', nsjail: 'unmounted in the child; seccomp (connect)' },
    async () => {
      const hostSocket = path.join(os.tmpdir(), 'pyexec-runs', `warm-${service.process.pid}`, 'channels.sock');
      const answer = await attack(
        service,
        py(
          BLOCKED_SOCKET,
          'def main(targets):',
          '    def connect(target):',
          '        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
          '        s.connect(target)',
          "        s.sendall(b'forged stdout\\n')",
          "    return {'list': attempt(lambda: os.listdir('/sandbox/warm')), **{t: attempt(lambda t=t: connect(t)) for t in targets}}",
        ),
        { targets: [hostSocket, '/sandbox/warm/channels.sock'] },
      );
      expect(answer.status).toBe(200);
      for (const outcome of Object.values(answer.body.result) as Array<{ ok: boolean }>) expect(outcome.ok).toBe(false);
    },
  );

  c('a host Unix stream socket (a real listener, world-writable)', { seccomp: 'seccomp (connect)', nsjail: 'mount namespace; seccomp (connect)' }, async () => {
    const socketPath = path.join(scratch, 'host.sock');
    let connections = 0;
    const server = net.createServer((conn) => {
      connections++;
      conn.destroy();
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    await fs.chmod(socketPath, 0o777);
    try {
      const answer = await attack(
        service,
        py(
          BLOCKED_SOCKET,
          'def main(target):',
          '    def go():',
          '        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
          '        s.connect(target)',
          "        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')",
          '    return attempt(go)',
        ),
        { target: socketPath },
      );
      expect(answer.body.result.ok).toBe(false);
      expect(answer.body.result.errno).toMatch(mode === 'seccomp' ? /^EACCES$/ : /^(EACCES|ENOENT)$/);
      expect(connections).toBe(0);
    } finally {
      server.close();
    }
  });

  c('a host Unix datagram socket, by sendto() and by sendmsg() on a datagram socketpair', 'seccomp (socket type, socketpair type, sendto address)', async () => {
    const socketPath = path.join(scratch, 'host-dgram.sock');
    const listener = await datagramListener(socketPath);
    try {
      const answer = await attack(
        service,
        py(
          BLOCKED_SOCKET,
          'def main(target):',
          '    def by_sendto():',
          '        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
          "        return s.sendto(b'via-sendto', target)",
          '    def by_socketpair(kind):',
          '        a, b = socket.socketpair(socket.AF_UNIX, kind)',
          "        return a.sendmsg([b'via-sendmsg'], [], 0, target)",
          '    def by_stream_sendto():',
          '        a, b = socket.socketpair()',
          "        return a.sendto(b'via-stream', target)",
          "    return {'sendto': attempt(by_sendto), 'dgram_pair': attempt(lambda: by_socketpair(socket.SOCK_DGRAM)),",
          "            'seqpacket_pair': attempt(lambda: by_socketpair(socket.SOCK_SEQPACKET)), 'stream_pair': attempt(by_stream_sendto)}",
        ),
        { target: socketPath },
      );
      const result = answer.body.result;
      for (const key of ['sendto', 'dgram_pair', 'seqpacket_pair', 'stream_pair']) expect(result[key].ok).toBe(false);
      await new Promise((r) => setTimeout(r, 200));
      expect(listener.received()).toEqual([]);
    } finally {
      listener.stop();
    }
  });

  c('well-known host sockets: /dev/log, /run/*.sock, docker and containerd', { seccomp: 'seccomp (connect)', nsjail: 'mount namespace; seccomp (connect)' }, async () => {
    const answer = await attack(
      service,
      py(
        BLOCKED_SOCKET,
        'import glob',
        'def main():',
        "    targets = ['/dev/log', '/run/systemd/journal/socket', '/run/systemd/notify', '/var/run/docker.sock', '/run/containerd/containerd.sock', '/run/dbus/system_bus_socket']",
        "    targets += glob.glob('/run/*.sock') + glob.glob('/var/run/*.sock')",
        '    def go(t):',
        '        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
        '        s.connect(t)',
        '    return {t: attempt(lambda: go(t)) for t in targets}',
      ),
    );
    for (const outcome of Object.values(answer.body.result) as Array<{ ok: boolean }>) expect(outcome.ok).toBe(false);
  });

  c('an abstract Unix socket of the host (\\0name), connect and bind', { seccomp: 'seccomp (connect, bind); Landlock scope', nsjail: 'seccomp (connect, bind); network namespace' }, async () => {
    const name = `\0sec-abstract-${process.pid}-${Date.now()}`;
    let connections = 0;
    const server = net.createServer((conn) => {
      connections++;
      conn.destroy();
    });
    await new Promise<void>((resolve) => server.listen(name, resolve));
    try {
      const answer = await attack(
        service,
        py(
          BLOCKED_SOCKET,
          'def main(name):',
          '    def connect():',
          '        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
          '        s.connect(name)',
          '    def bind():',
          '        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
          "        s.bind('\\0sandbox-offers-a-service')",
          '        s.listen(1)',
          "    return {'connect': attempt(connect), 'bind': attempt(bind)}",
        ),
        { name },
      );
      expect(answer.body.result.connect).toMatchObject({ ok: false, errno: 'EACCES' });
      expect(answer.body.result.bind).toMatchObject({ ok: false, errno: 'EACCES' });
      expect(connections).toBe(0);
    } finally {
      server.close();
    }
  });

  c('a local socketpair still works (asyncio and multiprocessing need it)', 'allowed by design', async () => {
    const answer = await attack(service, py('import socket', 'def main():', '    a, b = socket.socketpair()', "    a.sendall(b'ping')", '    return b.recv(4).decode()'));
    expect(answer.body.result).toBe('ping');
  });
});

/** A root-owned, world-writable Unix datagram socket that records what reaches it. */
async function datagramListener(socketPath: string): Promise<{ received(): string[]; stop(): void }> {
  const code = [
    'import os, socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    's.bind(sys.argv[1])',
    'os.chmod(sys.argv[1], 0o777)',
    "print('ready', flush=True)",
    'while True:',
    "    print(s.recv(200).decode(errors='replace'), flush=True)",
  ].join('\n');
  const child: ChildProcess = spawn('/usr/bin/python3', ['-c', code, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        if (line === 'ready') resolve();
        else lines.push(line);
      }
    });
    child.on('error', reject);
  });
  return { received: () => [...lines], stop: () => child.kill('SIGKILL') };
}
