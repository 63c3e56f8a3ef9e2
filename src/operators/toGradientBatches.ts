import { Observable, type OperatorFunction } from 'rxjs';
import {
  SCHEMA_VERSION,
  type AdvantagedSample,
  type BatchSample,
  type GradientBatch,
} from '../../schemas/index.ts';
import { detachedMetrics, type Metrics } from '../metrics/metrics.ts';
import { forwardErrors } from './forwardErrors.ts';

export type BatchLimit =
  /** A batch holds exactly this many samples (the last one may hold fewer). */
  | { samples: number }
  /** A batch holds as many samples as fit in this many tokens (prompt + completion, unpadded). */
  | { tokens: number };

export interface ToGradientBatchesOptions {
  limit: BatchLimit;
  /** Emit the last, smaller batch when the source completes (default true); otherwise drop it, counted. */
  emitPartial?: boolean;
  metrics?: Metrics;
}

export function toBatchSample(s: AdvantagedSample): BatchSample {
  return {
    rolloutId: s.id,
    groupId: s.groupId,
    promptTokenIds: s.promptTokenIds,
    completionTokenIds: s.completionTokenIds,
    behaviourLogProbs: s.behaviourLogProbs,
    advantage: s.advantage,
    policyVersion: s.policyVersion,
    finishReason: s.finishReason,
  };
}

/**
 * Two 32-bit FNV-1a hashes (different offsets) of the rollout ids: 16 hex digits, deterministic, and
 * computed in JS (node:crypto's per-call cost showed in bench/operators at 256 samples a batch).
 */
function batchId(ids: readonly string[]): string {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193 ^ 0x5bd1e995;
  for (const id of ids) {
    for (let i = 0; i < id.length; i++) {
      const c = id.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h2 = Math.imul(h2 ^ c, 0x01000193) ^ (h2 >>> 15);
    }
    h1 = Math.imul(h1 ^ 10, 0x01000193);
    h2 = Math.imul(h2 ^ 10, 0x01000193) ^ (h2 >>> 15);
  }
  return (h1 >>> 0).toString(16).padStart(8, '0') + (h2 >>> 0).toString(16).padStart(8, '0');
}

/** Assemble a GradientBatch; its id is a hash of its rollout ids, so a rebuilt batch has the same id. */
export function makeGradientBatch(samples: BatchSample[]): GradientBatch {
  const ids = new Array<string>(samples.length);
  let completionTokens = 0;
  let maxCompletionLength = 0;
  let minPolicyVersion = Infinity;
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i]!;
    ids[i] = s.rolloutId;
    completionTokens += s.completionTokenIds.length;
    if (s.completionTokenIds.length > maxCompletionLength) maxCompletionLength = s.completionTokenIds.length;
    if (s.policyVersion < minPolicyVersion) minPolicyVersion = s.policyVersion;
  }
  return {
    schemaVersion: SCHEMA_VERSION,
    id: batchId(ids),
    samples,
    completionTokens,
    maxCompletionLength,
    minPolicyVersion: samples.length > 0 ? minPolicyVersion : 0,
  };
}

/**
 * Packs advantaged samples into gradient batches by sample count or by token budget.
 *
 * ```
 * source:  -a-b-c-d-e-|         ({ samples: 2 })
 * output:  ---X---Y---(Z|)      (X = [a,b], Y = [c,d], Z = [e])
 * ```
 *
 * With a token budget a sample longer than the budget goes alone in its own batch (counted as
 * batches.oversized) rather than being lost. Counters: batches.emitted, batches.samples.
 */
export function toGradientBatches(
  options: ToGradientBatchesOptions,
): OperatorFunction<AdvantagedSample, GradientBatch> {
  const metrics = options.metrics ?? detachedMetrics();
  const emitted = metrics.counter('batches.emitted');
  const batchedSamples = metrics.counter('batches.samples');
  const oversized = metrics.counter('batches.oversized');
  const droppedPartial = metrics.counter('drops.samples', { reason: 'partial_batch' });
  const { limit } = options;
  const bySamples = 'samples' in limit;
  const size = bySamples ? limit.samples : limit.tokens;
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`toGradientBatches: limit must be a positive integer, got ${JSON.stringify(limit)}`);
  }

  return (source) =>
    new Observable<GradientBatch>((subscriber) => {
      let buffer: BatchSample[] = [];
      let tokens = 0;

      const emit = () => {
        const samples = buffer;
        buffer = [];
        tokens = 0;
        emitted.inc();
        batchedSamples.inc(samples.length);
        subscriber.next(makeGradientBatch(samples));
      };

      const subscription = source.subscribe(
        forwardErrors(subscriber, {
          next: (sample: AdvantagedSample) => {
            if (bySamples) {
              buffer.push(toBatchSample(sample));
              if (buffer.length >= size) emit();
              return;
            }
            const cost = sample.promptTokenIds.length + sample.completionTokenIds.length;
            if (buffer.length > 0 && tokens + cost > size) emit();
            buffer.push(toBatchSample(sample));
            tokens += cost;
            if (cost > size) oversized.inc();
            if (tokens >= size) emit();
          },
          complete: () => {
            if (buffer.length > 0) {
              if (options.emitPartial ?? true) emit();
              else droppedPartial.inc(buffer.length);
            }
            subscriber.complete();
          },
        }),
      );
      return () => {
        subscription.unsubscribe();
        buffer = [];
      };
    });
}
