/** Every error the API can answer with: its `error.type`, its HTTP status and when it happens. */
export const ERROR_TYPES = {
  invalid_request: { status: 400, when: 'The body is not a JSON object of the documented shape; the message names the field.' },
  syntax_error: { status: 400, when: 'The script does not compile; `line` and `column` say where.' },
  missing_main: { status: 400, when: 'The script has no top-level `def main` or `async def main`.' },
  not_found: { status: 404, when: 'No such path.' },
  method_not_allowed: { status: 405, when: 'The path exists but not for this method; `Allow` lists the methods.' },
  payload_too_large: { status: 413, when: 'The body is larger than REQUEST_MAX_BYTES.' },
  unsupported_media_type: { status: 415, when: 'Content-Type is missing or not application/json.' },
  runtime_error: { status: 422, when: 'The script raised; `exception`, `line` and a `traceback` of only its own frames are given.' },
  result_not_serializable: { status: 422, when: "main()'s return value is not JSON; the message names the type and where it sits." },
  result_too_large: { status: 422, when: 'The JSON of the return value is larger than RESULT_MAX_BYTES.' },
  timeout: { status: 422, when: 'The run used up its wall-clock or CPU time limit and was killed.' },
  memory_limit: { status: 422, when: 'The run hit its memory limit (MemoryError, or the kernel killed it).' },
  killed: { status: 422, when: 'The run ended before main() returned: sys.exit/os._exit, or a signal.' },
  overloaded: { status: 429, when: 'Every run slot is busy and the queue is full or the wait too long; `Retry-After` says when to retry.' },
  internal_error: { status: 500, when: "A bug in the service; quote the request id. Never the service's stack trace." },
  sandbox_unavailable: { status: 503, when: 'No sandbox is usable on this host (the message says why), or the sandbox failed to start this run. A script never runs unsandboxed.' },
  shutting_down: { status: 503, when: 'The instance received SIGTERM and admits no new runs.' },
} as const;

export type ErrorType = keyof typeof ERROR_TYPES;

/** An error answer: thrown or returned by any stage, turned into JSON by respond.ts. */
export class ApiError extends Error {
  constructor(
    readonly type: ErrorType,
    message: string,
    readonly details: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  get status(): number {
    return ERROR_TYPES[this.type].status;
  }
}
