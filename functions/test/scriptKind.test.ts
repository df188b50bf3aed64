/**
 * Script classification for the warm path (sandbox/warm/scriptKind.ts): `lean` only when every
 * import statement names a standard-library module; `full` for anything else, and for anything
 * it cannot read with certainty. A wrong `full` costs speed only; so does a wrong `lean`.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { SCAN_MAX_CHARS, scriptKind, STDLIB_MODULES } from '../src/sandbox/warm/scriptKind';

const lines = (...parts: string[]) => parts.join('\n') + '\n';

describe('scriptKind', () => {
  test('a script longer than SCAN_MAX_CHARS is full unread; one just under it is read', () => {
    const body = lines('def main():', '    return 1');
    const pad = (n: number) => '#' + 'x'.repeat(n - body.length - 2) + '\n';
    expect(scriptKind(pad(SCAN_MAX_CHARS) + body)).toBe('lean');
    expect(scriptKind(pad(SCAN_MAX_CHARS + 1) + body)).toBe('full');
  });

  test.each([
    ['no imports', lines('def main():', '    return "hello"')],
    ['standard-library imports', lines('import os, sys', 'import json as j', 'from collections import OrderedDict', 'import os.path', 'def main():', '    return 1')],
    ['`from __future__`', lines('from __future__ import annotations', 'def main(): return 1')],
    ['an import statement in a string', lines('s = "import pandas"', "t = 'from numpy import array'", 'def main(): return s')],
    ['in a triple-quoted string', lines('"""', 'import pandas', 'from numpy import x', '"""', "doc = '''", 'import numpy', "'''", 'def main(): return doc')],
    ['in a comment', lines('# import pandas', 'import os  # from numpy import array', 'def main(): return 1')],
    ['in an f-string, with nested quotes and braces', lines('x = 1', 'd = {"k": 2}', 's = f"{x!r:>{x}} {d[\'k\']} {{import pandas}} {"import numpy"}"', 'def main(): return s')],
    ['in raw and byte strings with escaped quotes', lines('a = r"\\"import pandas"', "b = b'\\'import numpy'", 'def main(): return 1')],
    ['dynamic imports (the lean child pays them)', lines('import importlib', 'def main():', '    importlib.import_module("numpy")', '    return __import__("pandas").__name__')],
    ['indented, after `;` and `:`', lines('def main():', '    import re; import json', '    if True: import math', '    return 1')],
    ['continued lines and parentheses', lines('from os import (path,', '    sep)', 'import os, \\', '    sys', 'def main(): return 1')],
    [
      '`yield from` and `raise ... from`',
      lines('def gen():', '    yield from range(3)', 'def main():', '    try:', '        return list(gen())', '    except KeyError as e:', '        raise ValueError() from e'),
    ],
  ])('lean: %s', (_name, script) => {
    expect(scriptKind(script)).toBe('lean');
  });

  test.each([
    ['a third-party import', lines('import pandas as pd', 'def main(): return 1')],
    ['one of several modules', lines('import os, pandas as pd', 'def main(): return 1')],
    ['`from numpy.linalg import norm`', lines('from numpy.linalg import norm', 'def main(): return 1')],
    ['an indented import inside a function', lines('import os', 'def main():', '    if os.environ:', '        import numpy', '    return 1')],
    ['after `;`', lines('import os; import numpy', 'def main(): return 1')],
    ["after a compound statement's `:`", lines('try: import pandas', 'except ImportError: pass', 'def main(): return 1')],
    ['after a string that looks unterminated to a careless reader', lines('s = "a\\"b"', 'import pandas', 'def main(): return s')],
    ['after a triple-quoted string', lines('s = """x', '"""', 'import scipy', 'def main(): return s')],
    ['a relative import', lines('from . import helpers', 'def main(): return 1')],
    ['a relative import of a module', lines('from .helpers import x', 'def main(): return 1')],
    ['an unterminated string', lines('s = "abc', 'def main(): return 1')],
    ['an unterminated triple-quoted string', lines('s = """abc', 'def main(): return 1')],
    ['unbalanced brackets', lines('x = (1, 2', 'def main(): return 1')],
    ['a closing bracket too many', lines('x = 1)', 'def main(): return 1')],
    ['an import of an unexpected shape', lines('import (os)', 'def main(): return 1')],
    ['a stray backslash', lines('x = 1 \\ 2', 'def main(): return 1')],
    ['a non-ASCII identifier (NFKC could make it anything)', lines('ｉｍｐｏｒｔ pandas', 'def main(): return 1')],
    ['a module from no list (not even the standard library)', lines('import numpyy', 'def main(): return 1')],
  ])('full: %s', (_name, script) => {
    expect(scriptKind(script)).toBe('full');
  });

  test('non-ASCII in strings and comments is fine', () => {
    expect(scriptKind(lines('# héllo', 'def main():', '    return "naïve ☃"'))).toBe('lean');
  });

  test('an f-string nested beyond what is read is full', () => {
    let nested = '1';
    for (let i = 0; i < 10; i++) nested = `f"{${nested}}"`;
    expect(scriptKind(lines(`x = ${nested}`, 'def main(): return x'))).toBe('full');
  });
});

/* ------------------------------------------------------------------ the allow-list */

const ROOT = '/var/cache/pyexec-rootfs/current/root';
const rootPython = path.join(ROOT, 'usr', 'bin', 'python3');
const runnable = fs.existsSync(rootPython) && process.getuid?.() === 0;
if (!runnable) process.stderr.write(`\n*** SKIPPING the allow-list check: no sandbox root at ${ROOT}, or not root (chroot). scripts/setup.sh --test builds it. ***\n\n`);

(runnable ? test : test.skip)("the allow-list is the sandbox root's interpreter's sys.stdlib_module_names", () => {
  const result = spawnSync('chroot', [ROOT, '/usr/bin/python3', '-I', '-c', 'import sys; print("\\n".join(sorted(sys.stdlib_module_names)))'], { encoding: 'utf8', timeout: 30000 });
  expect(result.status).toBe(0);
  const names = result.stdout.split('\n').filter(Boolean);
  expect(names.length).toBeGreaterThan(200);
  expect([...STDLIB_MODULES].sort()).toEqual(names.sort());
});
