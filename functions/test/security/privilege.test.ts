/**
 * Process interference and privilege: no signal, trace or memory access reaches the service,
 * pid 1 or another run; no way back to privileges (setuid binaries, capabilities, namespaces,
 * other syscall ABIs, risky kernel interfaces). Syscalls are made by number through ctypes, the
 * way an attacker would, so Python's own wrappers are not what is tested.
 */
import { spawnSync } from 'child_process';
import { sandboxModes } from '../helpers/service';
import { attack, attackCase, execute, py, SECURITY_LIMITS, startService, TRY, type Layer, type RunningService } from './helpers';

const SECCOMP_EPERM = 'seccomp (EPERM)';

describe.each(sandboxModes())('security: processes and privilege in %s mode', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService(SECURITY_LIMITS, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });
  const c = (category: string, name: string, layer: Layer, body: () => Promise<void>) => attackCase(category, name, layer, mode, () => service, body);

  c('process', 'kill(-1, SIGKILL) while another run is in flight', { seccomp: 'per-run uid; Landlock signal scope', nsjail: 'pid namespace' }, async () => {
    const survivor = execute(service, py('import time', 'def main():', '    time.sleep(1.0)', "    return 'survived'"));
    await new Promise((r) => setTimeout(r, 300));
    const answer = await attack(
      service,
      py('import os, signal', 'def main():', '    try:', '        os.kill(-1, signal.SIGKILL)', '    except OSError as e:', '        return e.errno', "    return 'sent'"),
    );
    expect([200, 422]).toContain(answer.status);
    const other = await survivor;
    expect(other.status).toBe(200);
    expect(other.body.result).toBe('survived');
  });

  c('process', 'signals to the parent, pid 1 and the service', { seccomp: 'uid permission; Landlock signal scope', nsjail: 'pid namespace (service invisible; parent is outside)' }, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'import signal',
        'def main(service_pid):',
        '    out = {}',
        '    for name, pid in (("parent", os.getppid()), ("service", service_pid)):',
        '        if pid in (0, os.getpid()):',
        '            continue',
        '        out[name] = attempt(lambda: os.kill(pid, signal.SIGKILL))',
        '    if os.getpid() != 1:',
        "        out['pid1'] = attempt(lambda: os.kill(1, signal.SIGKILL))",
        '    return out',
      ),
      { service_pid: service.process.pid },
    );
    expect(answer.status).toBe(200);
    for (const outcome of Object.values(answer.body.result) as Array<{ ok: boolean }>) expect(outcome.ok).toBe(false);
    expect(service.process.exitCode).toBeNull();
  });

  c('process', 'ptrace attach to the parent and to the service', SECCOMP_EPERM, async () => {
    const answer = await attack(
      service,
      py(TRY, 'def main(pid):', "    return {'parent': raw_syscall(101, 16, os.getppid(), 0, 0), 'service': raw_syscall(101, 16, pid, 0, 0), 'traceme': raw_syscall(101, 0, 0, 0, 0)}"),
      {
        pid: service.process.pid,
      },
    );
    expect(answer.body.result).toEqual({ parent: 'EPERM', service: 'EPERM', traceme: 'EPERM' });
  });

  c('process', "process_vm_readv / process_vm_writev and pidfd_getfd on the service's memory and descriptors", SECCOMP_EPERM, async () => {
    const answer = await attack(
      service,
      py(TRY, 'def main(pid):', "    return {'readv': raw_syscall(310, pid, 0, 0, 0, 0, 0), 'writev': raw_syscall(311, pid, 0, 0, 0, 0, 0), 'pidfd_getfd': raw_syscall(438, 0, 3, 0)}"),
      {
        pid: service.process.pid,
      },
    );
    expect(answer.body.result).toEqual({ readv: 'EPERM', writev: 'EPERM', pidfd_getfd: 'EPERM' });
  });

  c('process', "other processes' /proc entries: pid 1's and the parent's mem, environ, fd, cwd", { seccomp: 'Landlock (/proc/self only)', nsjail: 'pid namespace; ptrace access checks' }, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        '    out = {}',
        '    for pid in {1, os.getppid()} - {0, os.getpid()}:',
        "        for entry in ('mem', 'environ', 'fd', 'cwd/', 'root/', 'maps', 'cmdline'):",
        "            p = f'/proc/{pid}/{entry}'",
        '            out[p] = attempt(lambda: os.listdir(p) if p.endswith("/") or entry == "fd" else open(p, "rb").read(64))',
        '    return out',
      ),
    );
    for (const [entry, outcome] of Object.entries(answer.body.result) as Array<[string, { ok: boolean }]>) {
      // nsjail: pid 1 is the runner itself when it has no parent in the jail; only foreign processes count.
      expect([entry, outcome.ok]).toEqual([entry, false]);
    }
  });

  c('privilege', 'setuid binaries (su, mount, passwd) give no privilege', { seccomp: 'no_new_privs', nsjail: 'no_new_privs; nosuid mounts; user namespace' }, async () => {
    const answer = await attack(
      service,
      py(
        'import subprocess',
        'def main():',
        '    out = {}',
        "    for cmd in (['/usr/bin/su', '-c', 'id -u', 'root'], ['/bin/mount', '-t', 'tmpfs', 'x', '/mnt'], ['/usr/bin/passwd', '-S', 'root'], ['/usr/bin/newgrp', 'root']):",
        '        try:',
        '            p = subprocess.run(cmd, capture_output=True, timeout=2, stdin=subprocess.DEVNULL)',
        "            out[cmd[0]] = [p.returncode, p.stdout.decode(errors='replace')[:100]]",
        '        except Exception as e:',
        "            out[cmd[0]] = [type(e).__name__, '']",
        "    out['euid'] = os.geteuid()",
        '    return out',
      ).replace('import subprocess', 'import os, subprocess'),
    );
    expect(answer.status).toBe(200);
    const { euid, ...runs } = answer.body.result;
    expect(euid).not.toBe(0);
    for (const [code, stdout] of Object.values(runs) as Array<[number | string, string]>) {
      expect(code).not.toBe(0);
      expect(stdout.trim()).not.toBe('0');
    }
  });

  c('privilege', 'capabilities: none effective, permitted or ambient (nsjail: no bounding or inheritable either); no_new_privs; seccomp filter on', 'uid change; no_new_privs; seccomp', async () => {
    // Asked of the kernel (capget, prctl) in /proc/self/status's format: seccomp mode's root has no /proc.
    const answer = await attack(
      service,
      py(
        'import ctypes',
        'def main():',
        '    libc = ctypes.CDLL(None)',
        '    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()',
        '    assert libc.capget(header, data) == 0',
        "    hexed = lambda bits: '%016x' % bits",
        '    both = lambda lo, hi: hexed((hi << 32) | lo)',
        '    bounding = sum(1 << cap for cap in range(64) if libc.prctl(23, cap, 0, 0, 0) == 1)',
        '    ambient = sum(1 << cap for cap in range(64) if libc.prctl(47, 1, cap, 0, 0) == 1)',
        "    return {'CapEff': both(data[0], data[3]), 'CapPrm': both(data[1], data[4]), 'CapInh': both(data[2], data[5]), 'CapBnd': hexed(bounding), 'CapAmb': hexed(ambient),",
        "            'NoNewPrivs': str(libc.prctl(39, 0, 0, 0, 0)), 'Seccomp': str(libc.prctl(21, 0, 0, 0, 0))}",
      ),
    );
    const status = answer.body.result;
    expect(status.CapEff).toBe('0000000000000000');
    expect(status.CapPrm).toBe('0000000000000000');
    expect(status.CapAmb).toBe('0000000000000000');
    if (mode === 'nsjail') {
      // nsjail empties these too (cold: nsjail itself; warm: the child, before its uid change).
      expect(status.CapBnd).toBe('0000000000000000');
      expect(status.CapInh).toBe('0000000000000000');
    }
    expect(status.NoNewPrivs).toBe('1');
    expect(status.Seccomp).toBe('2');
  });

  c('privilege', 'setuid(0), setgid(0), setgroups, setresuid', { seccomp: 'no capabilities (EPERM)', nsjail: 'no capability in its user namespace (EINVAL/EPERM)' }, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        "    return {'setuid': attempt(lambda: os.setuid(0)), 'setgid': attempt(lambda: os.setgid(0)), 'setgroups': attempt(lambda: os.setgroups([0])), 'setresuid': attempt(lambda: os.setresuid(0, 0, 0))}",
      ),
    );
    for (const outcome of Object.values(answer.body.result) as Array<{ ok: boolean }>) expect(outcome.ok).toBe(false);
  });

  c('privilege', 'unshare via ctypes: user, mount, net, pid namespaces', SECCOMP_EPERM, async () => {
    const answer = await attack(
      service,
      py(TRY, 'def main():', "    return {name: raw_syscall(272, flag) for name, flag in (('user', 0x10000000), ('mount', 0x20000), ('net', 0x40000000), ('pid', 0x20000000), ('all', 0x7C020000))}"),
    );
    expect(Object.values(answer.body.result)).toEqual(['EPERM', 'EPERM', 'EPERM', 'EPERM', 'EPERM']);
  });

  c('privilege', 'mount, umount, chroot, pivot_root, setns, open_tree, fsopen via ctypes', SECCOMP_EPERM, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        '    s = lambda b: ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value',
        "    return {'mount': raw_syscall(165, s(b'none'), s(b'/tmp'), s(b'tmpfs'), 0, 0), 'umount2': raw_syscall(166, s(b'/proc'), 2), 'chroot': raw_syscall(161, s(b'/')),",
        "            'pivot_root': raw_syscall(155, s(b'.'), s(b'.')), 'setns': raw_syscall(308, 0, 0), 'open_tree': raw_syscall(428, -100, s(b'/'), 1), 'fsopen': raw_syscall(430, s(b'tmpfs'), 0)}",
      ),
    );
    for (const value of Object.values(answer.body.result)) expect(value).toBe('EPERM');
  });

  c('privilege', 'clone() with namespace flags and clone3()', 'seccomp (clone flags EPERM, clone3 ENOSYS)', async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        "    return {'clone_newuser': raw_syscall(56, 0x10000000 | 17, 0, 0, 0, 0), 'clone_newnet': raw_syscall(56, 0x40000000 | 17, 0, 0, 0, 0), 'clone3': raw_syscall(435, 0, 0)}",
      ),
    );
    expect(answer.body.result).toEqual({ clone_newuser: 'EPERM', clone_newnet: 'EPERM', clone3: 'ENOSYS' });
  });

  c('privilege', 'x32-ABI syscall numbers (0x40000000|nr): socket, unshare, ptrace, getpid', 'seccomp (other ABIs: ENOSYS)', async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        '    x32 = 0x40000000',
        "    return {'socket': raw_syscall(x32 | 41, 2, 1, 0), 'unshare': raw_syscall(x32 | 272, 0x10000000), 'ptrace': raw_syscall(x32 | 101, 16, 1, 0, 0), 'getpid': raw_syscall(x32 | 39)}",
      ),
    );
    expect(answer.body.result).toEqual({ socket: 'ENOSYS', unshare: 'ENOSYS', ptrace: 'ENOSYS', getpid: 'ENOSYS' });
  });

  c('privilege', 'i386-ABI syscalls through int 0x80 (getpid, socketcall)', 'seccomp (other ABIs: ENOSYS)', async () => {
    // Machine code in an executable page: mov eax, nr; xor ebx, ebx; xor ecx, ecx; int 0x80; ret.
    const answer = await attack(
      service,
      py(
        'import ctypes, mmap',
        'def int80(nr):',
        "    code = b'\\xb8' + nr.to_bytes(4, 'little') + b'\\x31\\xdb\\x31\\xc9\\xcd\\x80\\xc3'",
        '    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)',
        '    page.write(code)',
        '    address = ctypes.addressof(ctypes.c_char.from_buffer(page))',
        '    return ctypes.CFUNCTYPE(ctypes.c_int)(address)()',
        'def main():',
        "    return {'getpid': int80(20), 'socketcall': int80(102)}",
      ),
    );
    if (answer.status === 422 && answer.body.error.signal === 'SIGSEGV' && hostRefusesInt80()) {
      // Some kernels (PVM and Firecracker guests among them) give no i386 ABI to 64-bit
      // processes at all: int 0x80 faults outside any sandbox too, which refuses it even sooner.
      return;
    }
    expect(answer.status).toBe(200);
    expect(answer.body.result).toEqual({ getpid: -38, socketcall: -38 });
  });

  c('privilege', 'io_uring, bpf, perf_event_open, userfaultfd', SECCOMP_EPERM, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        "    return {'io_uring_setup': raw_syscall(425, 1, 0), 'io_uring_enter': raw_syscall(426, 0, 0, 0, 0, 0, 0), 'bpf': raw_syscall(321, 0, 0, 0), 'perf_event_open': raw_syscall(298, 0, 0, -1, -1, 0), 'userfaultfd': raw_syscall(323, 0)}",
      ),
    );
    for (const value of Object.values(answer.body.result)) expect(value).toBe('EPERM');
  });

  c('privilege', 'keyctl, add_key, request_key (kernel keyrings)', SECCOMP_EPERM, async () => {
    const answer = await attack(
      service,
      py(TRY, 'def main():', "    return {'keyctl': raw_syscall(250, 0, -3, 0), 'add_key': raw_syscall(248, 0, 0, 0, 0, -3), 'request_key': raw_syscall(249, 0, 0, 0, -3)}"),
    );
    for (const value of Object.values(answer.body.result)) expect(value).toBe('EPERM');
  });

  c('privilege', 'module and kexec loading, reboot, swapon, acct, settimeofday', SECCOMP_EPERM, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        "    return {'init_module': raw_syscall(175, 0, 0, 0), 'finit_module': raw_syscall(313, 0, 0, 0), 'kexec_load': raw_syscall(246, 0, 0, 0, 0), 'kexec_file_load': raw_syscall(320, 0, 0, 0, 0, 0),",
        "            'reboot': raw_syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0), 'swapon': raw_syscall(167, 0, 0), 'acct': raw_syscall(163, 0), 'settimeofday': raw_syscall(164, 0, 0)}",
      ),
    );
    for (const value of Object.values(answer.body.result)) expect(value).toBe('EPERM');
  });

  c('privilege', 'personality(): no ASLR, READ_IMPLIES_EXEC, all bits', 'seccomp (personality flags EPERM)', async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        "    return {'no_aslr': raw_syscall(135, 0x0040000), 'read_implies_exec': raw_syscall(135, 0x0400000), 'all': raw_syscall(135, 0xffffffff), 'query': raw_syscall(135, 0)}",
      ),
    );
    expect(answer.body.result).toMatchObject({ no_aslr: 'EPERM', read_implies_exec: 'EPERM', all: 'EPERM' });
    expect(typeof answer.body.result.query).toBe('number');
  });
});

/** Whether int 0x80 faults in a plain process of the host, outside any sandbox (the test's own probe of the kernel). */
function hostRefusesInt80(): boolean {
  const probe = [
    'import ctypes, mmap',
    "code = b'\\xb8\\x14\\x00\\x00\\x00\\x31\\xdb\\x31\\xc9\\xcd\\x80\\xc3'",
    'page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)',
    'page.write(code)',
    'ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()',
  ].join('\n');
  return spawnSync('/usr/bin/python3', ['-I', '-c', probe]).signal === 'SIGSEGV';
}
