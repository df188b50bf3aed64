/**
 * The request's `files`, beyond their schema: each path safe to create under the run's working
 * directory, and the whole within the instance's caps. The runner writes them (runner/files.py)
 * inside the sandbox, by descriptors, never following a link; this check makes sure that what it
 * is asked to write is plain: relative, normalised, unique, and never where output files go.
 */
import { ApiError } from './errors';
import { base64DecodedBytes, hasControlCharacter, OUTPUT_DIR } from './sandbox/protocol';
import type { ExecuteRequest } from './schemas';

export interface InputFileCaps {
  /** INPUT_FILES_MAX. */
  count: number;
  /** INPUT_FILES_MAX_BYTES, decoded, all files together. */
  totalBytes: number;
  /** SCRIPT_MAX_FILE_MB: RLIMIT_FSIZE, which the runner writes under too. */
  fileBytes: number;
  /** SCRIPT_TMP_MB: the run's disk. */
  diskBytes: number;
}

/** Bytes a file name may take on Linux (NAME_MAX). */
const NAME_MAX_BYTES = 255;
/** Half of a surrogate pair without its other half: JSON may carry it, UTF-8 cannot encode it. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

type RequestFile = NonNullable<ExecuteRequest['files']>[number];

/** Throws invalid_request naming the first file (`files.N...`) that breaks a rule. */
export function checkInputFiles(files: RequestFile[], caps: InputFileCaps): void {
  if (files.length > caps.count) {
    throw new ApiError('invalid_request', `"files" holds ${files.length} files; the most this instance accepts is ${caps.count} (INPUT_FILES_MAX)`, { field: 'files', limit: caps.count });
  }
  const seen = new Map<string, number>();
  const directories = new Map<string, number>();
  let total = 0;
  files.forEach((file, index) => {
    const field = `files.${index}`;
    const problem = pathProblem(file.path);
    if (problem) throw new ApiError('invalid_request', `"${field}.path" ${JSON.stringify(file.path)} ${problem}`, { field: `${field}.path` });
    if (seen.has(file.path)) throw new ApiError('invalid_request', `"${field}.path" ${JSON.stringify(file.path)} is also files.${seen.get(file.path)}`, { field: `${field}.path` });
    if (directories.has(file.path)) {
      throw new ApiError('invalid_request', `"${field}.path" ${JSON.stringify(file.path)} is a directory of files.${directories.get(file.path)}`, { field: `${field}.path` });
    }
    const parts = file.path.split('/');
    for (let depth = 1; depth < parts.length; depth++) {
      const parent = parts.slice(0, depth).join('/');
      if (seen.has(parent)) {
        throw new ApiError('invalid_request', `"${field}.path" ${JSON.stringify(file.path)} needs a directory ${JSON.stringify(parent)}, which is files.${seen.get(parent)}`, {
          field: `${field}.path`,
        });
      }
      if (!directories.has(parent)) directories.set(parent, index);
    }
    seen.set(file.path, index);

    const bytes = decodedSize(file, field);
    if (bytes > caps.fileBytes) {
      throw new ApiError('invalid_request', `"${field}" holds ${bytes} bytes; a file may hold at most ${caps.fileBytes} (SCRIPT_MAX_FILE_MB)`, { field, limit: caps.fileBytes });
    }
    total += bytes;
  });
  const totalCap = Math.min(caps.totalBytes, caps.diskBytes);
  if (total > totalCap) {
    const which = caps.totalBytes <= caps.diskBytes ? 'INPUT_FILES_MAX_BYTES' : "SCRIPT_TMP_MB, the run's disk";
    throw new ApiError('invalid_request', `"files" hold ${total} bytes together; the most this instance accepts is ${totalCap} (${which})`, { field: 'files', limit: totalCap });
  }
}

/** Why a path may not be written, or undefined when it is fine. */
function pathProblem(path: string): string | undefined {
  if (hasControlCharacter(path)) return 'holds a control character';
  if (LONE_SURROGATE.test(path)) return 'is not valid Unicode (a lone surrogate)';
  if (path.startsWith('/')) return 'is absolute; paths are relative to the working directory';
  if (path.endsWith('/')) return 'ends with "/"; name a file';
  const parts = path.split('/');
  if (parts.some((part) => part === '')) return 'has an empty component ("//")';
  if (parts.some((part) => part === '.' || part === '..')) return 'has a "." or ".." component; paths must be normalised';
  if (parts.some((part) => Buffer.byteLength(part, 'utf8') > NAME_MAX_BYTES)) return `has a component longer than ${NAME_MAX_BYTES} bytes`;
  if (parts[0] === OUTPUT_DIR) return `is under "${OUTPUT_DIR}/", where the run's output files go; it starts empty`;
  return undefined;
}

function decodedSize(file: RequestFile, field: string): number {
  if (file.content !== undefined) {
    if (LONE_SURROGATE.test(file.content)) {
      throw new ApiError('invalid_request', `"${field}.content" is not valid Unicode (a lone surrogate); send bytes as content_base64`, { field: `${field}.content` });
    }
    return Buffer.byteLength(file.content, 'utf8');
  }
  const bytes = base64DecodedBytes(file.content_base64 ?? '');
  if (bytes === undefined) {
    throw new ApiError('invalid_request', `"${field}.content_base64" is not standard padded base64 (A-Z, a-z, 0-9, "+", "/", "=")`, { field: `${field}.content_base64` });
  }
  return bytes;
}
