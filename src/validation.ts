import type { z } from 'zod';
import { messageSchemas, SCHEMA_VERSION, type DeadLetter, type MessageName } from '../schemas/index.ts';

export interface ValidationIssue {
  path: string;
  message: string;
}

/** A message failed its schema. The message names each field and what is wrong with it. */
export class ValidationError extends Error {
  constructor(
    readonly schema: string,
    readonly issues: ValidationIssue[],
  ) {
    super(`Invalid ${schema}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    this.name = 'ValidationError';
  }
}

/** `samples[2].advantage`, or `(root)` for the message itself. */
function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    out += typeof part === 'number' ? `[${part}]` : out === '' ? String(part) : `.${String(part)}`;
  }
  return out === '' ? '(root)' : out;
}

export function describeIssues(error: z.ZodError): ValidationIssue[] {
  return error.issues.map((issue) => ({ path: formatPath(issue.path), message: issue.message }));
}

export type ValidationResult<T> = { ok: true; value: T } | { ok: false; error: ValidationError };

/** Validate a value against one of the message schemas without throwing. */
export function validateMessage<N extends MessageName>(
  name: N,
  value: unknown,
): ValidationResult<z.infer<(typeof messageSchemas)[N]>> {
  const result = messageSchemas[name].safeParse(value);
  if (result.success) return { ok: true, value: result.data as z.infer<(typeof messageSchemas)[N]> };
  return { ok: false, error: new ValidationError(name, describeIssues(result.error)) };
}

/** Validate or throw a ValidationError that names the fields at fault. */
export function parseMessage<N extends MessageName>(
  name: N,
  value: unknown,
): z.infer<(typeof messageSchemas)[N]> {
  const result = validateMessage(name, value);
  if (!result.ok) throw result.error;
  return result.value;
}

/** Build the dead letter for a message that could not be used. Bytes that are not UTF-8 go as base64. */
export function deadLetter(options: {
  source: string;
  reason: string;
  payload: string | Uint8Array;
  error?: ValidationError;
  key?: string;
  time?: number;
}): DeadLetter {
  const { payload } = options;
  let text: string;
  let encoding: DeadLetter['encoding'] = 'utf8';
  if (typeof payload === 'string') {
    text = payload;
  } else {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(payload);
    } catch {
      text = Buffer.from(payload).toString('base64');
      encoding = 'base64';
    }
  }
  return {
    schemaVersion: SCHEMA_VERSION,
    time: options.time ?? Date.now(),
    source: options.source,
    ...(options.error ? { schema: options.error.schema, issues: options.error.issues } : {}),
    reason: options.reason,
    ...(options.key !== undefined ? { key: options.key } : {}),
    payload: text,
    encoding,
  };
}
