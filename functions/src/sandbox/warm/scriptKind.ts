/**
 * Which warm child a script wants: `lean` when every module its import statements name is in the
 * standard library (the lean zygote's children, without numpy and pandas, start and exit faster),
 * `full` otherwise. Read from the script's text, never by running it: the import statements
 * (`import a.b, c as d`, `from a import b`, anywhere, indented or after `;` or `:`), with comments
 * and string literals (triple-quoted and f-strings too) skipped. Whatever this cannot read with
 * certainty is `full`: non-ASCII outside strings and comments, an unterminated string, unbalanced
 * brackets, a relative import, an import statement of an unexpected shape.
 *
 * A wrong answer costs speed, never correctness or security: children of both kinds are confined
 * alike and both have every module; a lean child that meets `__import__("pandas")` or
 * `importlib.import_module("numpy")` pays the import, and a full child runs a lean script as
 * well as today. A script that does not parse fails the same way in either.
 */

export type ScriptKind = 'lean' | 'full';

/**
 * Longer scripts are `full` unread. The scan runs on the event loop before admission, at about
 * 0.5 to 1 µs per character of punctuation: a 1 MiB script of `()` held the loop for up to 1 s
 * (red team, 2026-12-08). Below this a script costs at most tens of milliseconds.
 */
export const SCAN_MAX_CHARS = 64 * 1024;

export function scriptKind(script: string): ScriptKind {
  if (script.length > SCAN_MAX_CHARS) return 'full';
  const tokens = codeTokens(script);
  const modules = tokens && importedModules(tokens);
  if (!modules) return 'full';
  return modules.every((name) => STDLIB_MODULES.has(name.split('.')[0])) ? 'lean' : 'full';
}

/** What is left of the code once comments and strings are skipped: names, operators, and the ends of logical lines. */
type Token = { type: 'name'; text: string } | { type: 'op'; text: string } | { type: 'number' } | { type: 'newline' };

const IDENTIFIER_START = /[A-Za-z_]/;
const IDENTIFIER = /[A-Za-z0-9_]/;
const NUMBER = /[0-9A-Za-z_.]/;
const STRING_PREFIXES = new Set(['r', 'u', 'b', 'f', 't', 'br', 'rb', 'fr', 'rf', 'tr', 'rt']);
const OPENING = '([{';
const CLOSING = ')]}';
/** f-strings within f-strings deeper than this are not read: `full`. */
const MAX_NESTING = 8;

class Unreadable extends Error {}

/** The script's code tokens, or undefined when it cannot be read with certainty. */
function codeTokens(source: string): Token[] | undefined {
  try {
    const scanner = new Scanner(source);
    return scanner.code(0);
  } catch (error) {
    if (error instanceof Unreadable) return undefined;
    throw error;
  }
}

class Scanner {
  private at = 0;

  constructor(private readonly source: string) {}

  /**
   * Code until the end of the source (nesting 0), or inside an f-string's replacement field until
   * its closing brace (nesting > 0: its tokens are not kept, no statement can be in there).
   */
  code(nesting: number): Token[] {
    const { source } = this;
    const tokens: Token[] = [];
    let depth = 0;
    while (this.at < source.length) {
      const c = source[this.at];
      if (c === '#') {
        if (nesting > 0) throw new Unreadable(); // a comment inside a replacement field: not worth reading
        while (this.at < source.length && source[this.at] !== '\n' && source[this.at] !== '\r') this.at++;
      } else if (c === '\\') {
        // A line continuation; anywhere else outside a string a backslash is a syntax error.
        if (source.startsWith('\\\n', this.at)) this.at += 2;
        else if (source.startsWith('\\\r\n', this.at)) this.at += 3;
        else if (source.startsWith('\\\r', this.at)) this.at += 2;
        else throw new Unreadable();
      } else if (c === '\n' || c === '\r') {
        if (depth === 0 && nesting === 0) tokens.push({ type: 'newline' });
        this.at++;
      } else if (c === ' ' || c === '\t' || c === '\f') {
        this.at++;
      } else if (c === '"' || c === "'") {
        this.string('', nesting);
      } else if (IDENTIFIER_START.test(c)) {
        const start = this.at;
        while (this.at < source.length && IDENTIFIER.test(source[this.at])) this.at++;
        const word = source.slice(start, this.at);
        const next = source[this.at];
        if ((next === '"' || next === "'") && STRING_PREFIXES.has(word.toLowerCase())) this.string(word.toLowerCase(), nesting);
        else tokens.push({ type: 'name', text: word });
      } else if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(source[this.at + 1] ?? ''))) {
        while (this.at < source.length && NUMBER.test(source[this.at])) this.at++;
        tokens.push({ type: 'number' });
      } else if (c.charCodeAt(0) > 0x7f) {
        throw new Unreadable(); // identifiers are NFKC-normalised: a non-ASCII one could spell `import` or a module
      } else {
        this.at++;
        if (OPENING.includes(c)) depth++;
        if (CLOSING.includes(c)) {
          if (nesting > 0 && c === '}' && depth === 0) return tokens; // the replacement field's end
          if (--depth < 0) throw new Unreadable();
        }
        tokens.push({ type: 'op', text: c });
      }
    }
    if (depth !== 0 || nesting > 0) throw new Unreadable();
    return tokens;
  }

  /** Skips a string literal starting at its quote; in an f- or t-string, its replacement fields too. */
  private string(prefix: string, nesting: number): void {
    const { source } = this;
    const quote = source[this.at];
    const triple = source.startsWith(quote.repeat(3), this.at);
    const formatted = prefix.includes('f') || prefix.includes('t');
    this.at += triple ? 3 : 1;
    while (this.at < source.length) {
      const c = source[this.at];
      if (c === '\\') {
        this.at += 2; // an escaped character never ends a string, raw strings included
      } else if (triple ? source.startsWith(quote.repeat(3), this.at) : c === quote) {
        this.at += triple ? 3 : 1;
        return;
      } else if (!triple && (c === '\n' || c === '\r')) {
        throw new Unreadable(); // unterminated
      } else if (formatted && c === '{' && source[this.at + 1] === '{') {
        this.at += 2;
      } else if (formatted && c === '{') {
        if (nesting >= MAX_NESTING) throw new Unreadable();
        this.at++;
        this.code(nesting + 1);
      } else {
        this.at++;
      }
    }
    throw new Unreadable(); // unterminated at the end of the script
  }
}

const isName = (token: Token | undefined, text?: string): token is { type: 'name'; text: string } => token?.type === 'name' && (text === undefined || token.text === text);
const isOp = (token: Token | undefined, text: string): boolean => token?.type === 'op' && token.text === text;
/** Where a statement may start: the script's start, a new logical line, after `;` or a compound statement's `:`. */
const startsStatement = (token: Token | undefined): boolean => token === undefined || token.type === 'newline' || isOp(token, ';') || isOp(token, ':');

/** The modules the script's import statements name (dotted, as written), or undefined when one cannot be read. */
function importedModules(tokens: Token[]): string[] | undefined {
  const modules: string[] = [];
  /** Where the `import` of each `from a import b` read so far stands. */
  const fromImports = new Set<number>();
  for (let i = 0; i < tokens.length; i++) {
    if (isName(tokens[i], 'from') && startsStatement(tokens[i - 1])) {
      // `from a.b import ...` (`yield from` and `raise ... from` never start a statement)
      const module = dottedName(tokens, i + 1);
      if (!module || !isName(tokens[module.end], 'import')) return undefined; // relative (`from . import x`), or unexpected
      modules.push(module.name);
      fromImports.add(module.end);
    } else if (isName(tokens[i], 'import') && !fromImports.has(i)) {
      // `import a.b as c, d`; `import` is a hard keyword: it is in no other statement
      if (!startsStatement(tokens[i - 1])) return undefined;
      for (let at = i + 1; ; at++) {
        const module = dottedName(tokens, at);
        if (!module) return undefined;
        modules.push(module.name);
        at = module.end;
        if (isName(tokens[at], 'as')) {
          if (!isName(tokens[at + 1])) return undefined;
          at += 2;
        }
        if (at === tokens.length || tokens[at].type === 'newline' || isOp(tokens[at], ';')) break;
        if (!isOp(tokens[at], ',')) return undefined;
      }
    }
  }
  return modules;
}

/** The dotted name (`a.b.c`) starting at tokens[start], and the index after it; undefined when there is none there. */
function dottedName(tokens: Token[], start: number): { name: string; end: number } | undefined {
  const first = tokens[start];
  if (!isName(first) || KEYWORDS.has(first.text)) return undefined;
  const parts = [first.text];
  let end = start + 1;
  for (let next = tokens[end + 1]; isOp(tokens[end], '.') && isName(next) && !KEYWORDS.has(next.text); next = tokens[end + 1]) {
    parts.push(next.text);
    end += 2;
  }
  return { name: parts.join('.'), end };
}

/** Keywords that can follow where a module name is expected in a statement of another shape. */
const KEYWORDS = new Set(['as', 'import', 'from']);

/**
 * Python 3.13's sys.stdlib_module_names: the sandbox root's interpreter's (scriptKind.test.ts
 * compares them). A top-level name here is a module of the standard library.
 */
export const STDLIB_MODULES: ReadonlySet<string> = new Set(
  (
    '__future__ _abc _aix_support _android_support _apple_support _ast _asyncio _bisect _blake2 _bz2 _codecs _codecs_cn _codecs_hk _codecs_iso2022 _codecs_jp _codecs_kr _codecs_tw ' +
    '_collections _collections_abc _colorize _compat_pickle _compression _contextvars _csv _ctypes _curses _curses_panel _datetime _dbm _decimal _elementtree _frozen_importlib ' +
    '_frozen_importlib_external _functools _gdbm _hashlib _heapq _imp _interpchannels _interpqueues _interpreters _io _ios_support _json _locale _lsprof _lzma _markupbase _md5 ' +
    '_multibytecodec _multiprocessing _opcode _opcode_metadata _operator _osx_support _overlapped _pickle _posixshmem _posixsubprocess _py_abc _pydatetime _pydecimal _pyio _pylong ' +
    '_pyrepl _queue _random _scproxy _sha1 _sha2 _sha3 _signal _sitebuiltins _socket _sqlite3 _sre _ssl _stat _statistics _string _strptime _struct _suggestions _symtable _sysconfig ' +
    '_thread _threading_local _tkinter _tokenize _tracemalloc _typing _uuid _warnings _weakref _weakrefset _winapi _wmi _zoneinfo abc antigravity argparse array ast asyncio atexit ' +
    'base64 bdb binascii bisect builtins bz2 cProfile calendar cmath cmd code codecs codeop collections colorsys compileall concurrent configparser contextlib contextvars copy copyreg ' +
    'csv ctypes curses dataclasses datetime dbm decimal difflib dis doctest email encodings ensurepip enum errno faulthandler fcntl filecmp fileinput fnmatch fractions ftplib functools ' +
    'gc genericpath getopt getpass gettext glob graphlib grp gzip hashlib heapq hmac html http idlelib imaplib importlib inspect io ipaddress itertools json keyword linecache locale ' +
    'logging lzma mailbox marshal math mimetypes mmap modulefinder msvcrt multiprocessing netrc nt ntpath nturl2path numbers opcode operator optparse os pathlib pdb pickle pickletools ' +
    'pkgutil platform plistlib poplib posix posixpath pprint profile pstats pty pwd py_compile pyclbr pydoc pydoc_data pyexpat queue quopri random re readline reprlib resource ' +
    'rlcompleter runpy sched secrets select selectors shelve shlex shutil signal site smtplib socket socketserver sqlite3 sre_compile sre_constants sre_parse ssl stat statistics string ' +
    'stringprep struct subprocess symtable sys sysconfig syslog tabnanny tarfile tempfile termios textwrap this threading time timeit tkinter token tokenize tomllib trace traceback ' +
    'tracemalloc tty turtle turtledemo types typing unicodedata unittest urllib uuid venv warnings wave weakref webbrowser winreg winsound wsgiref xml xmlrpc zipapp zipfile zipimport ' +
    'zlib zoneinfo'
  ).split(' '),
);
