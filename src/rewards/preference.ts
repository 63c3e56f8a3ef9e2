/**
 * The preference reward of DeepSeek-R1's second RL stage: a helpfulness/harmlessness reward model that
 * scores a completion beside the rule rewards. This file is the remote form, a scorer behind HTTP;
 * `preferenceModel.ts` is a small classifier trained here.
 *
 * Contract (schemas/preference.ts, JSON Schema in schemas/json/): one POST per completion,
 *
 *   request   {"schemaVersion": 1, "id": "<prompt id>", "prompt": "...", "completion": "..."}
 *   response  {"score": <finite number>}            (200; other fields ignored)
 *
 * Policy: each attempt has its own timeout (`timeoutMs`) and also stops when the reward's signal
 * fires (the stage's timeout). Network errors, timeouts, 429 and 5xx are retried up to `retries`
 * times, waiting `backoffMs * 2^(k-1)` before retry k (capped at `maxBackoffMs`, randomised down to
 * half of it so that many rollouts failing together do not retry in step; a Retry-After header asks
 * for at least its delay, within the cap). Other statuses (4xx but 429, 3xx) and responses that fail
 * the schema are not retried: asking again would not change them.
 */
import { PreferenceResponse, SCHEMA_VERSION, type PreferenceRequest } from '../../schemas/index.ts';
import { describeIssues } from '../validation.ts';
import type { RewardFunction } from './rewards.ts';

export interface HttpPreferenceRewardOptions {
  /** The scorer's endpoint, http: or https:; `user:password@` in it is sent as basic authentication. */
  url: string | URL;
  /** Limit of one attempt (connecting, sending and reading the whole answer), in ms. Default 5 000. */
  timeoutMs?: number;
  /** Attempts after the first one for retryable failures. Default 2 (so 3 attempts in all). */
  retries?: number;
  /** Wait before the first retry, doubled for each next one, in ms. Default 250. */
  backoffMs?: number;
  /** Longest wait between attempts, Retry-After included, in ms. Default 10 000. */
  maxBackoffMs?: number;
  /** The reward's name (its key in ScoredRollout.rewards). Default "preference". */
  name?: string;
  /** Extra request headers, e.g. `{ authorization: 'Bearer ...' }`. */
  headers?: Record<string, string>;
  /** Told of each failed attempt that will be retried, and of the wait before the retry. */
  onRetry?: (failure: AttemptFailure, delayMs: number) => void;
}

export type PreferenceFailureKind = 'network' | 'timeout' | 'http' | 'invalid_response' | 'aborted';

/** What went wrong with one attempt. */
export interface AttemptFailure {
  /** 1 for the first attempt. */
  attempt: number;
  kind: PreferenceFailureKind;
  /** The HTTP status, when an answer came. */
  status?: number;
  /** What went wrong, without the URL or the attempt (e.g. `HTTP 503 Service Unavailable: "busy"`). */
  detail: string;
}

/**
 * The scorer could not give a score. The message names the URL, the attempt and what went wrong, and
 * the earlier attempts when there were retries; the fields carry the same for code.
 */
export class PreferenceScorerError extends Error {
  readonly kind: PreferenceFailureKind;
  readonly status: number | undefined;
  constructor(
    readonly url: string,
    /** Every failed attempt, the last one being what ended the request (an abort included). */
    readonly failures: readonly AttemptFailure[],
    /** Requests sent (an abort before the first one leaves 0). */
    readonly attempts: number,
    readonly maxAttempts: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'PreferenceScorerError';
    const last = failures[failures.length - 1]!;
    this.kind = last.kind;
    this.status = last.status;
  }
}

/**
 * A RewardFunction that asks a remote preference scorer (see the file comment for the contract and
 * the retry policy). Every failure is a `PreferenceScorerError`, which `scoreRollouts` records as a
 * reward failure (the reward is null for that rollout).
 */
export function httpPreferenceReward(options: HttpPreferenceRewardOptions): RewardFunction {
  const url = parseUrl(options.url);
  const shown = displayUrl(url);
  const timeoutMs = options.timeoutMs ?? 5_000;
  const retries = options.retries ?? 2;
  const backoffMs = options.backoffMs ?? 250;
  const maxBackoffMs = options.maxBackoffMs ?? 10_000;
  if (!(timeoutMs > 0 && Number.isFinite(timeoutMs)))
    throw new RangeError(`httpPreferenceReward: timeoutMs must be a positive number of ms, got ${timeoutMs}`);
  if (!(Number.isInteger(retries) && retries >= 0))
    throw new RangeError(`httpPreferenceReward: retries must be an integer >= 0, got ${retries}`);
  if (!(backoffMs >= 0 && Number.isFinite(backoffMs)))
    throw new RangeError(`httpPreferenceReward: backoffMs must be a number of ms >= 0, got ${backoffMs}`);
  if (!(maxBackoffMs >= 0))
    throw new RangeError(
      `httpPreferenceReward: maxBackoffMs must be a number of ms >= 0, got ${maxBackoffMs}`,
    );
  const maxAttempts = retries + 1;
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    accept: 'application/json',
    ...(Object.keys(options.headers ?? {}).some((k) => k.toLowerCase() === 'authorization')
      ? {}
      : basicAuth(url)),
    ...options.headers,
  };
  // fetch refuses URLs with credentials: they went into the Authorization header instead.
  url.username = '';
  url.password = '';

  const fail = (
    failures: AttemptFailure[],
    attempts: number,
    note: string,
    cause?: unknown,
  ): PreferenceScorerError => {
    const last = failures[failures.length - 1]!;
    const head =
      last.kind === 'aborted'
        ? `preference scorer ${shown}: ${last.detail}`
        : `preference scorer ${shown}: attempt ${last.attempt} of ${maxAttempts}: ${last.detail}`;
    const earlier = failures
      .slice(0, -1)
      .map((f) => `attempt ${f.attempt}: ${f.detail}`)
      .join('; ');
    const message = `${head}${note}${earlier ? ` (earlier: ${earlier})` : ''}`;
    return new PreferenceScorerError(shown, failures, attempts, maxAttempts, message, { cause });
  };

  /** The reward's signal fired before, during, or in the wait before attempt `attempt`. */
  const aborted = (
    failures: AttemptFailure[],
    signal: AbortSignal,
    phase: 'before' | 'during' | 'while waiting before',
    attempt: number,
  ) => {
    const detail = `aborted ${phase} attempt ${attempt} of ${maxAttempts} (${reasonText(signal.reason)})`;
    failures.push({ attempt, kind: 'aborted', detail });
    return fail(failures, phase === 'during' ? attempt : attempt - 1, '', signal.reason);
  };

  const request = async (body: string, signal: AbortSignal): Promise<number> => {
    const failures: AttemptFailure[] = [];
    for (let attempt = 1; ; attempt++) {
      if (signal.aborted) throw aborted(failures, signal, 'before', attempt);
      const outcome = await tryOnce(url, headers, body, timeoutMs, signal);
      if (outcome.ok) return outcome.score;
      if (signal.aborted) throw aborted(failures, signal, 'during', attempt);
      const failure: AttemptFailure = { attempt, ...outcome.failure };
      failures.push(failure);
      if (!outcome.retryable) {
        const note =
          outcome.failure.kind === 'http'
            ? '; not retried (of the error statuses only 429 and 5xx are)'
            : '; not retried (the scorer answered, but not as the contract says)';
        throw fail(failures, attempt, note, outcome.cause);
      }
      if (attempt === maxAttempts)
        throw fail(failures, attempt, retries > 0 ? '; no retries left' : '; retries are off', outcome.cause);
      const exponential = Math.min(maxBackoffMs, backoffMs * 2 ** (attempt - 1));
      const delay = Math.min(
        maxBackoffMs,
        Math.max(exponential * (0.5 + 0.5 * Math.random()), outcome.retryAfterMs ?? 0),
      );
      options.onRetry?.(failure, delay);
      try {
        await sleep(delay, signal);
      } catch {
        throw aborted(failures, signal, 'while waiting before', attempt + 1);
      }
    }
  };

  return {
    name: options.name ?? 'preference',
    score: ({ prompt, completion }, signal) => {
      const payload: PreferenceRequest = {
        schemaVersion: SCHEMA_VERSION,
        id: prompt.id,
        prompt: prompt.text,
        completion,
      };
      return request(JSON.stringify(payload), signal);
    },
  };
}

type Outcome =
  | { ok: true; score: number }
  | {
      ok: false;
      failure: Omit<AttemptFailure, 'attempt'>;
      retryable: boolean;
      retryAfterMs?: number;
      cause?: unknown;
    };

async function tryOnce(
  url: URL,
  headers: Record<string, string>,
  body: string,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Outcome> {
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
  let status: number | undefined;
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers,
      body,
      signal: AbortSignal.any([signal, timeout.signal]),
    });
    status = response.status;
    const text = await response.text();
    if (!response.ok) {
      const retryable = status === 429 || status >= 500;
      const failure = {
        kind: 'http' as const,
        status,
        detail: `HTTP ${status}${response.statusText ? ` ${response.statusText}` : ''}${bodySnippet(text)}`,
      };
      const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
      return { ok: false, failure, retryable, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (error) {
      const type = response.headers.get('content-type');
      return {
        ok: false,
        retryable: false,
        cause: error,
        failure: {
          kind: 'invalid_response',
          status,
          detail:
            `invalid response (HTTP ${status}${type ? `, ${type}` : ''}): not JSON ` +
            `(${(error as Error).message})${bodySnippet(text)}`,
        },
      };
    }
    const parsed = PreferenceResponse.safeParse(json);
    if (!parsed.success) {
      const issues = describeIssues(parsed.error).map((i) => `${i.path}: ${i.message}`);
      return {
        ok: false,
        retryable: false,
        failure: {
          kind: 'invalid_response',
          status,
          detail: `invalid response (HTTP ${status}): ${issues.join('; ')} (expected {"score": <finite number>})`,
        },
      };
    }
    return { ok: true, score: parsed.data.score };
  } catch (error) {
    if (timeout.signal.aborted && !signal.aborted) {
      const during = status === undefined ? '' : ` (HTTP ${status} came, the body did not)`;
      return {
        ok: false,
        retryable: true,
        cause: error,
        failure: {
          kind: 'timeout',
          detail: `timed out after ${timeoutMs} ms${during}`,
          ...withStatus(status),
        },
      };
    }
    return {
      ok: false,
      retryable: true,
      cause: error,
      failure: { kind: 'network', detail: `network error: ${networkText(error)}`, ...withStatus(status) },
    };
  } finally {
    clearTimeout(timer);
  }
}

const withStatus = (status: number | undefined) => (status === undefined ? {} : { status });

function parseUrl(value: string | URL): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new TypeError(`httpPreferenceReward: url is not a valid URL: "${String(value)}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new TypeError(`httpPreferenceReward: url must be http: or https:, got "${displayUrl(url)}"`);
  return url;
}

/** `user:password@` of a URL as an Authorization header. */
function basicAuth(url: URL): Record<string, string> {
  if (!url.username && !url.password) return {};
  const user = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return { authorization: `Basic ${Buffer.from(user).toString('base64')}` };
}

/** The URL as errors show it: a password in it is masked. */
function displayUrl(url: URL): string {
  if (!url.password) return url.href;
  const copy = new URL(url.href);
  copy.password = '***';
  return copy.href;
}

/** ` : "<first 200 characters of the body>"`, or nothing for an empty body. */
function bodySnippet(text: string): string {
  const trimmed = text.trim();
  if (trimmed === '') return '';
  return `: ${JSON.stringify(trimmed.length > 200 ? `${trimmed.slice(0, 200)}...` : trimmed)}`;
}

/** Retry-After as delta-seconds or an HTTP date, in ms; undefined when absent or unreadable. */
function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** fetch's "fetch failed" hides the reason in `cause` (ECONNREFUSED, ENOTFOUND...); dig it out. */
function networkText(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current instanceof Error && depth < 4; depth++) {
    if (current instanceof AggregateError && current.errors.length > 0) {
      parts.push(current.errors.map((e) => networkText(e)).join(', '));
      break;
    }
    if (current.message && current.message !== 'fetch failed') parts.push(current.message);
    current = current.cause;
  }
  return parts.length > 0 ? parts.join(': ') : String(error);
}

function reasonText(reason: unknown): string {
  if (reason instanceof Error) return reason.message || reason.name;
  return reason === undefined ? 'signal aborted' : String(reason);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
