/**
 * Policy weights on a run's versions topic, for generators in other processes. Two ways, both announced by
 * the PolicyVersion message of the version:
 * - inline: the weights in chunks under Kafka's 1 MB message limit, published just before the PolicyVersion
 *   (same key, so same partition and order); each chunk's headers say version, index, count, total bytes
 *   and the SHA-256 of the whole;
 * - by reference: the PolicyVersion names a checkpoint path that every generator can read.
 */
import { createHash, randomUUID } from 'node:crypto';
import { Observable, map, tap, type OperatorFunction } from 'rxjs';
import type { KafkaMessage } from 'kafkajs';
import type { PolicyVersion } from '../../../schemas/index.ts';
import { detachedMetrics, type Metrics } from '../../metrics/metrics.ts';
import {
  decodeMessage,
  isWeightsChunk,
  kafkaRecords,
  type Decoded,
  type KafkaConsumerOptions,
} from './source.ts';
import type { KafkaPublisher, OutgoingRecord } from './sink.ts';
import { RECORD_KIND_HEADER, recordKey, topicName, WEIGHTS_CHUNK_KIND } from './topics.ts';

/** Chunk payload size: with headers and batch framing it stays under the broker's 1 MiB message.max.bytes. */
export const WEIGHTS_CHUNK_BYTES = 900 * 1024;

const HEADERS = {
  version: 'rxrl-weights-version',
  index: 'rxrl-weights-index',
  count: 'rxrl-weights-count',
  bytes: 'rxrl-weights-bytes',
  sha256: 'rxrl-weights-sha256',
} as const;

export interface WeightsChunk {
  version: number;
  index: number;
  count: number;
  /** Size of the whole weight set. */
  bytes: number;
  /** SHA-256 (hex) of the whole weight set. */
  sha256: string;
  data: Buffer;
}

/** A record of the versions topic: a weights chunk or a PolicyVersion. */
export type VersionsRecord =
  { kind: 'chunk'; chunk: WeightsChunk } | { kind: 'policy'; policy: PolicyVersion };

/** A complete version: its weights (inline) or, when only a checkpoint was published, `policy.checkpoint`. */
export interface PolicyWeights {
  policy: PolicyVersion;
  weights?: Uint8Array;
}

/** Splits a weight set into chunks of at most `chunkBytes`. */
export function weightsChunks(
  version: number,
  weights: Uint8Array,
  chunkBytes = WEIGHTS_CHUNK_BYTES,
): WeightsChunk[] {
  const data = Buffer.from(weights.buffer, weights.byteOffset, weights.byteLength);
  const sha256 = createHash('sha256').update(data).digest('hex');
  const count = Math.max(1, Math.ceil(data.length / chunkBytes));
  return Array.from({ length: count }, (_, index) => ({
    version,
    index,
    count,
    bytes: data.length,
    sha256,
    data: data.subarray(index * chunkBytes, (index + 1) * chunkBytes),
  }));
}

/**
 * Publishes a new policy version on `<run>.versions`: its weight chunks first when `weights` is given, then
 * the PolicyVersion (whose `checkpoint`, if set, is the by-reference way). Resolves once all are durable.
 */
export async function publishPolicyVersion(
  publisher: KafkaPublisher,
  run: string,
  policy: PolicyVersion,
  weights?: Uint8Array,
  chunkBytes = WEIGHTS_CHUNK_BYTES,
): Promise<void> {
  const topic = topicName(run, 'versions');
  const key = recordKey('PolicyVersion', policy, run);
  const sent = (weights ? weightsChunks(policy.version, weights, chunkBytes) : []).map((chunk) =>
    publisher.publishRecord(topic, weightsChunkRecord(key, chunk)),
  );
  sent.push(publisher.publish(topic, 'PolicyVersion', policy, key));
  await Promise.all(sent);
}

/** The Kafka record of a chunk: its bytes as the value, what it is part of in headers. */
export function weightsChunkRecord(key: string, chunk: WeightsChunk): OutgoingRecord {
  return {
    key,
    value: chunk.data,
    headers: {
      [RECORD_KIND_HEADER]: WEIGHTS_CHUNK_KIND,
      [HEADERS.version]: String(chunk.version),
      [HEADERS.index]: String(chunk.index),
      [HEADERS.count]: String(chunk.count),
      [HEADERS.bytes]: String(chunk.bytes),
      [HEADERS.sha256]: chunk.sha256,
    },
  };
}

/** Reads a versions-topic record: a chunk (by its headers) or a PolicyVersion message. */
export function decodeVersionsRecord(message: KafkaMessage): Decoded<VersionsRecord> {
  if (!isWeightsChunk(message)) {
    const decoded = decodeMessage('PolicyVersion', message.value);
    return decoded.kind === 'message'
      ? { kind: 'message', value: { kind: 'policy', policy: decoded.value } }
      : decoded;
  }
  const header = (name: string) => message.headers?.[name]?.toString();
  const [version, index, count, bytes] = [HEADERS.version, HEADERS.index, HEADERS.count, HEADERS.bytes].map(
    (name) => Number(header(name)),
  ) as [number, number, number, number];
  const sha256 = header(HEADERS.sha256);
  const data = message.value;
  const numbersValid = [version, index, count, bytes].every((n) => Number.isInteger(n) && n >= 0);
  if (!numbersValid || index >= count || sha256 === undefined || data === null) {
    return {
      kind: 'invalid',
      reason: `Weights chunk with missing or bad headers (${Object.values(HEADERS)})`,
    };
  }
  return {
    kind: 'message',
    value: { kind: 'chunk', chunk: { version, index, count, bytes, sha256, data } },
  };
}

export interface ReassembleWeightsOptions {
  /** Versions whose chunks may be in assembly at once (default 2); the oldest is given up beyond that. */
  maxPendingVersions?: number;
  metrics?: Metrics;
}

interface PendingSet {
  sha256: string;
  bytes: number;
  chunks: (Buffer | undefined)[];
  received: number;
}

/**
 * Yields each complete version that is newer than the last one yielded; older and incomplete ones are
 * dropped and counted.
 *
 * ```
 * records: --c5.0--c5.1--V5--c6.0--V6--V4--|      (c6.1 never came; V6 names no checkpoint)
 * output:  -----------------W5-------------|      (W5 = { policy: V5, weights })
 * ```
 *
 * Counters: weights.versions (yielded), weights.incomplete (a version whose chunks did not all arrive),
 * weights.corrupt (a complete set failing its checksum), weights.old (a PolicyVersion not newer than the last).
 * A version with a checkpoint is yielded even when its chunks are incomplete or corrupt.
 */
export function reassembleWeights(
  options: ReassembleWeightsOptions = {},
): OperatorFunction<VersionsRecord, PolicyWeights> {
  const maxPending = options.maxPendingVersions ?? 2;
  const metrics = options.metrics ?? detachedMetrics();
  const yielded = metrics.counter('weights.versions');
  const incomplete = metrics.counter('weights.incomplete');
  const corrupt = metrics.counter('weights.corrupt');
  const old = metrics.counter('weights.old');

  return (source) =>
    new Observable<PolicyWeights>((subscriber) => {
      const pending = new Map<number, PendingSet>();
      let latest = -1;

      const addChunk = (chunk: WeightsChunk) => {
        if (chunk.version <= latest) return;
        let set = pending.get(chunk.version);
        // A version published again (a learner restarted mid-publish) replaces what came before.
        if (!set || set.sha256 !== chunk.sha256 || set.chunks.length !== chunk.count) {
          if (!set && pending.size >= maxPending) {
            const oldest = Math.min(...pending.keys());
            pending.delete(oldest);
            incomplete.inc();
          }
          set = { sha256: chunk.sha256, bytes: chunk.bytes, chunks: new Array(chunk.count), received: 0 };
          pending.set(chunk.version, set);
        }
        if (!set.chunks[chunk.index]) {
          set.chunks[chunk.index] = chunk.data;
          set.received++;
        }
      };

      const complete = (policy: PolicyVersion) => {
        if (policy.version <= latest) {
          old.inc();
          return;
        }
        const set = pending.get(policy.version);
        for (const version of pending.keys()) {
          if (version < policy.version) incomplete.inc(); // its PolicyVersion came and went before
          if (version <= policy.version) pending.delete(version);
        }
        let weights: Buffer | undefined;
        if (set && set.received === set.chunks.length) {
          weights = Buffer.concat(set.chunks as Buffer[]);
          if (
            weights.length !== set.bytes ||
            createHash('sha256').update(weights).digest('hex') !== set.sha256
          ) {
            corrupt.inc();
            weights = undefined;
          }
        } else if (set || policy.checkpoint === undefined) {
          incomplete.inc();
        }
        if (!weights && policy.checkpoint === undefined) return;
        latest = policy.version;
        yielded.inc();
        subscriber.next(weights ? { policy, weights } : { policy });
      };

      const subscription = source.subscribe({
        next: (record) => (record.kind === 'chunk' ? addChunk(record.chunk) : complete(record.policy)),
        error: (error) => subscriber.error(error),
        complete: () => subscriber.complete(),
      });
      return () => {
        subscription.unsubscribe();
        pending.clear();
      };
    });
}

export interface PolicyWeightsOptions
  extends Omit<KafkaConsumerOptions, 'groupId'>, ReassembleWeightsOptions {
  run: string;
  /** Default: a group of its own, new on every call, so that it reads every version still retained. */
  groupId?: string;
}

/**
 * The complete versions of a run's policy as they are published, from the oldest still retained. Each
 * record is acked as soon as the reassembler holds it: a generator that restarts reads the topic again.
 */
export function policyWeights(
  options: PolicyWeightsOptions,
): Observable<PolicyWeights> & { closed(): Promise<void> } {
  const records = kafkaRecords<VersionsRecord>({
    ...options,
    groupId: options.groupId ?? `${options.run}.weights.${randomUUID()}`,
    topic: topicName(options.run, 'versions'),
    deadLetterTopic: topicName(options.run, 'dlq'),
    decode: decodeVersionsRecord,
  });
  const weights = records.pipe(
    tap((delivery) => delivery.ack()),
    map((delivery) => delivery.value),
    reassembleWeights(options),
  );
  return Object.assign(weights, { closed: () => records.closed() });
}
