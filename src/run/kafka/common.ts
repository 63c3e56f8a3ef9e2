/** What the roles of a run over Kafka share: topics to wait for, metrics to forward, bounded topic reads. */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { KafkaMessage } from 'kafkajs';
import { lastValueFrom, takeUntil, takeWhile, timer, type Subscription } from 'rxjs';
import type { Metrics } from '../../metrics/metrics.ts';
import { createKafka, type KafkaConnectionOptions } from '../../transport/kafka/client.ts';
import type { KafkaPublisher } from '../../transport/kafka/sink.ts';
import { kafkaRecords } from '../../transport/kafka/source.ts';
import { EDGE_NAMES, recordKey, topicName } from '../../transport/kafka/topics.ts';

/**
 * Resolves once every edge topic of the run exists: workers may start before the learner creates them.
 * Fails after `timeoutMs`, naming the topics still missing.
 */
export async function waitForRunTopics(
  connection: KafkaConnectionOptions,
  run: string,
  options: { timeoutMs: number; signal?: AbortSignal; onWait?: (missing: string[]) => void },
): Promise<void> {
  const wanted = EDGE_NAMES.map((edge) => topicName(run, edge));
  const admin = createKafka(connection).admin();
  await admin.connect();
  try {
    await pollUntil(
      async () => {
        const existing = new Set(await admin.listTopics());
        const missing = wanted.filter((topic) => !existing.has(topic));
        return missing.length > 0 ? missing : undefined;
      },
      {
        ...options,
        timedOut: (missing) =>
          new Error(
            `The topics of run "${run}" do not exist after ${Math.round(options.timeoutMs / 1000)} s ` +
              `(missing: ${missing.join(', ')}): start its learner, or create them with rxrl topics create --run ${run}`,
          ),
      },
    );
  } finally {
    await admin.disconnect();
  }
}

/**
 * Asks `check` once a second until it finds nothing left to wait for (undefined); calls `onWait` with
 * what it waits for the first time it has to, and after `timeoutMs` throws what `timedOut` makes of it
 * (or the signal's reason once it aborts).
 */
export async function pollUntil<Pending>(
  check: () => Promise<Pending | undefined>,
  options: {
    timeoutMs: number;
    signal?: AbortSignal | undefined;
    onWait?: ((pending: Pending) => void) | undefined;
    timedOut: (pending: Pending) => Error;
  },
): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  let told = false;
  for (;;) {
    const pending = await check();
    if (pending === undefined) return;
    if (options.signal?.aborted) throw abortError(options.signal);
    if (Date.now() > deadline) throw options.timedOut(pending);
    if (!told) options.onWait?.(pending);
    told = true;
    await sleep(1_000, undefined, { signal: options.signal }).catch(() => undefined);
  }
}

/** Publishes every metric of `metrics` on `<run>.metrics`; the first failure is kept for `failure()`. */
export function forwardMetrics(
  metrics: Metrics,
  publisher: KafkaPublisher,
  run: string,
): { subscription: Subscription; failure(): Error | undefined } {
  const topic = topicName(run, 'metrics');
  let failure: Error | undefined;
  const subscription = metrics.stream.subscribe((metric) => {
    publisher.publish(topic, 'Metric', metric, recordKey('Metric', metric, run)).catch((error: Error) => {
      failure ??= error;
    });
  });
  return { subscription, failure: () => failure };
}

/** End offsets (the offset the next record will get) of each partition of a topic. */
export async function endOffsets(
  connection: KafkaConnectionOptions,
  topic: string,
): Promise<Record<string, number>> {
  const admin = createKafka(connection).admin();
  await admin.connect();
  try {
    const offsets = await retrying(() => admin.fetchTopicOffsets(topic));
    return Object.fromEntries(offsets.map((o) => [String(o.partition), Number(o.high)]));
  } finally {
    await admin.disconnect();
  }
}

/**
 * The records of `topic` from the given offsets (per partition; the start of the log for the others) up
 * to its end at the time of the call, read with a throwaway consumer group that is deleted afterwards.
 */
export async function readTopicSince(
  connection: KafkaConnectionOptions,
  topic: string,
  from: Readonly<Record<string, number>>,
  options: { timeoutMs?: number } = {},
): Promise<KafkaMessage[]> {
  const admin = createKafka(connection).admin();
  await admin.connect();
  try {
    const ends = await retrying(() => admin.fetchTopicOffsets(topic));
    const todo = new Map<number, number>(); // partition -> last offset to read
    const starts = new Map<number, number>();
    for (const { partition, high, low } of ends) {
      // Partitions with nothing new start at their end: nothing older is read.
      const start = Math.min(Math.max(from[partition] ?? 0, Number(low)), Number(high));
      starts.set(partition, start);
      if (start < Number(high)) todo.set(partition, Number(high) - 1);
    }
    if (todo.size === 0) return [];
    const groupId = `${topic}.reader.${randomUUID()}`;
    const records = kafkaRecords<KafkaMessage>({
      connection,
      groupId,
      topic,
      deadLetterTopic: topic, // never used: every record decodes
      startOffsets: starts,
      decode: (message) => ({ kind: 'message', value: message }),
      maxInFlight: 10_000,
    });
    const out: KafkaMessage[] = [];
    const timeoutMs = options.timeoutMs ?? 60_000;
    try {
      // The deadline ends the subscription too, so that the consumer always leaves (closed() below).
      await lastValueFrom(
        records.pipe(
          takeWhile((delivery) => {
            delivery.ack();
            const last = todo.get(delivery.partition);
            if (last === undefined || Number(delivery.offset) < starts.get(delivery.partition)!) return true;
            out.push(delivery.value);
            if (Number(delivery.offset) >= last) todo.delete(delivery.partition);
            return todo.size > 0;
          }),
          takeUntil(timer(timeoutMs)),
        ),
        { defaultValue: undefined },
      );
      if (todo.size > 0) throw new Error(`Reading ${topic} to its end took over ${timeoutMs / 1000} s`);
    } finally {
      await records.closed().catch(() => {});
      await admin.deleteGroups([groupId]).catch(() => {});
    }
    return out;
  } finally {
    await admin.disconnect();
  }
}

/** Deletes consumer groups of this process that are done with (throwaway readers); errors are ignored. */
export async function deleteGroups(connection: KafkaConnectionOptions, groupIds: string[]): Promise<void> {
  const admin = createKafka(connection).admin();
  try {
    await admin.connect();
    await admin.deleteGroups(groupIds);
  } catch {
    // A group that is gone already, or a broker going away: nothing to clean up then.
  } finally {
    await admin.disconnect().catch(() => {});
  }
}

export function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error('Stopped');
}

/** A 31-bit FNV-1a hash of a string: deterministic seeds from record ids. */
export function hash31(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return (h >>> 0) & 0x7fffffff;
}

/**
 * Retries `attempt` while it fails with a retriable Kafka error (a leader not elected yet just after the
 * topics were created, a coordinator loading), with backoff from 200 ms, up to `tries` times.
 */
export async function retrying<T>(attempt: () => Promise<T>, tries = 10): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await attempt();
    } catch (error) {
      if (i >= tries || (error as { retriable?: boolean }).retriable !== true) throw error;
      await sleep(Math.min(200 * 2 ** (i - 1), 5_000));
    }
  }
}

/** Something changed: `wait()` resolves at the next `notify()` (no wake-up is lost between a check and it). */
export class Changes {
  private resolve: () => void = () => undefined;
  private promise = this.renew();

  notify(): void {
    const resolve = this.resolve;
    this.promise = this.renew();
    resolve();
  }

  wait(): Promise<void> {
    return this.promise;
  }

  private renew(): Promise<void> {
    return new Promise<void>((resolve) => (this.resolve = resolve));
  }
}
