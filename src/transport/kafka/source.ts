/**
 * Consuming from Kafka: a topic read by a consumer group as an Observable of deliveries that downstream
 * acks once their effect is durable. Backpressure (pause/resume), the commit policy and dead letters all live
 * here, in {@link kafkaRecords}; {@link kafkaSource} is the message source of one edge of a run.
 */
import { Observable } from 'rxjs';
import type { KafkaMessage } from 'kafkajs';
import type { MessageName } from '../../../schemas/index.ts';
import { detachedMetrics, type Metrics } from '../../metrics/metrics.ts';
import { deadLetter, validateMessage, type ValidationError } from '../../validation.ts';
import { createKafka, DEFAULT_RETRY, type KafkaConnectionOptions } from './client.ts';
import { PartitionAcks } from './offsets.ts';
import { KafkaPublisher, type EdgeMessage } from './sink.ts';
import {
  DLQ_MAX_MESSAGE_BYTES,
  edgeTopic,
  recordKey,
  RECORD_KIND_HEADER,
  topicName,
  WEIGHTS_CHUNK_KIND,
  type Edge,
  type MessageOf,
} from './topics.ts';

/** One record handed downstream. Call `ack()` once its effect is durable; until then it may be re-delivered. */
export interface Delivery<T> {
  readonly value: T;
  readonly key: string | undefined;
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  /** Lets the consumer group commit past this record (and frees its place, as `release`). Idempotent. */
  ack(): void;
  /**
   * Frees this record's place in the consumer's in-flight bound (`maxInFlight`) without letting the group
   * commit past it: for a record that is decided but whose outcome is not durable yet (a learner's sample
   * until its next checkpoint). `ack` still has to follow. Idempotent.
   */
  release(): void;
}

export interface KafkaSource<T> extends Observable<Delivery<T>> {
  /**
   * Resolves once every consumer this source started for its subscriptions has been unsubscribed, has
   * committed what was acked and has left the group; rejects if any of them could not.
   */
  closed(): Promise<void>;
}

/** What a record turned out to be: a message, something to dead-letter, or a record of another kind. */
export type Decoded<T> =
  | { kind: 'message'; value: T }
  | { kind: 'invalid'; reason: string; error?: ValidationError }
  | { kind: 'skip' };

export interface KafkaConsumerOptions {
  connection: KafkaConnectionOptions;
  /** Consumers of one group share the topic's partitions; each record goes to one of them. */
  groupId: string;
  /** Records delivered and not acked yet, at most (default 1000): reaching it pauses the partitions. */
  maxInFlight?: number;
  /** Partitions resume once in-flight records are down to this (default half of maxInFlight). */
  resumeAt?: number;
  /** Where a group with no committed offset starts: the oldest record (default) or only new ones. */
  fromBeginning?: boolean;
  /**
   * Offsets to start reading partitions from, by partition, instead of the group's committed offsets (a
   * learner resuming from the positions its checkpoint recorded). Each applies once: the first time this
   * consumer is assigned that partition. Partitions without one start from the committed offset.
   */
  startOffsets?: ReadonlyMap<number, number>;
  /** Acked offsets are committed at most this often (default 100 ms), and on unsubscribe. */
  commitIntervalMs?: number;
  /** Give up after this many failed commits in a row (default 10); a failed commit is retried otherwise. */
  maxCommitFailures?: number;
  /** A consumer silent for this long is dropped from the group and its partitions move (default 30 s). */
  sessionTimeoutMs?: number;
  /** Longest a fetch waits at the broker for data, and the delay to notice a resume (default 100 ms). */
  maxWaitTimeMs?: number;
  metrics?: Metrics;
}

export interface KafkaRecordsOptions<T> extends KafkaConsumerOptions {
  topic: string;
  /**
   * Where records that fail `decode` go, as DeadLetter messages with the original bytes. Its messages may
   * be up to DLQ_MAX_MESSAGE_BYTES (createRunTopics sets that on `<run>.dlq`).
   */
  deadLetterTopic: string;
  decode: (message: KafkaMessage) => Decoded<T>;
}

export interface KafkaSourceOptions<E extends Edge> extends KafkaConsumerOptions {
  run: string;
  edge: E;
  /**
   * What this consumer needs of a valid message beyond its schema: a reason refuses it, and it is
   * dead-lettered like an invalid record (a prompt a rollout worker's tokenizer cannot read, which would
   * otherwise fail every worker it reached in turn).
   */
  check?: (value: EdgeMessage<E>) => string | undefined;
}

/**
 * The messages of one edge of a run, each parsed as JSON and validated with the edge's schema. A record
 * that is not valid goes to `<run>.dlq` with the reason and its original bytes, and the stream goes on.
 *
 * ```
 * topic:   --a--b--x--c--      (x is not valid JSON)
 * output:  --A--B-----C--      (each { value, ack }; x becomes a dead letter, committed once written)
 * ```
 *
 * Delivery is at least once: a record is re-delivered (here or to another consumer of the group) when it
 * was not acked before a rebalance, a crash or an unsubscribe. Records carry ids: downstream drops the
 * ones it has seen (groupSamples ignores a sample index it already has), and acks them too.
 */
export function kafkaSource<E extends Edge>(options: KafkaSourceOptions<E>): KafkaSource<EdgeMessage<E>> {
  const { topic, schema } = edgeTopic(options.run, options.edge);
  return kafkaRecords<EdgeMessage<E>>({
    ...options,
    topic,
    deadLetterTopic: topicName(options.run, 'dlq'),
    decode: (message) => {
      if (isWeightsChunk(message)) return { kind: 'skip' };
      const decoded = decodeMessage<typeof schema>(schema, message.value) as Decoded<EdgeMessage<E>>;
      const refused = decoded.kind === 'message' ? options.check?.(decoded.value) : undefined;
      return refused === undefined ? decoded : { kind: 'invalid', reason: refused };
    },
  });
}

/** JSON-parses and validates a record's value. */
export function decodeMessage<N extends MessageName>(schema: N, value: Buffer | null): Decoded<MessageOf<N>> {
  if (value === null) return { kind: 'invalid', reason: 'Record has no value (a tombstone)' };
  let json: unknown;
  try {
    json = JSON.parse(value.toString('utf8'));
  } catch (error) {
    return { kind: 'invalid', reason: `Not valid JSON: ${(error as Error).message}` };
  }
  const checked = validateMessage(schema, json);
  if (checked.ok) return { kind: 'message', value: checked.value };
  return { kind: 'invalid', reason: checked.error.message, error: checked.error };
}

export function isWeightsChunk(message: KafkaMessage): boolean {
  return message.headers?.[RECORD_KIND_HEADER]?.toString() === WEIGHTS_CHUNK_KIND;
}

/**
 * A topic read by a consumer group, every record decoded by `decode`. The whole delivery policy of the
 * Kafka transport is here:
 *
 * - Backpressure: at most `maxInFlight` records are delivered and not acked. Reaching it pauses the topic's
 *   partitions (the rest of the fetched batch is dropped and fetched again later); they resume when
 *   in-flight records are down to `resumeAt`.
 * - Commits: manual. Per partition, the offset after the longest run of acked records is committed every
 *   `commitIntervalMs` and on unsubscribe; a record that is not acked is never committed past.
 * - Dead letters: an invalid record is written to `deadLetterTopic` and counts as acked once that is durable.
 * - Rebalances: a partition that moves is read again from its committed offset by its new owner, so records
 *   delivered and not committed here are delivered again there; acks of records delivered before the
 *   rebalance no longer commit (the committed offset of a partition is its new owner's business).
 *
 * Counters (labelled by topic): kafka.consumed, kafka.delivered, kafka.dead_letters, kafka.skipped,
 * kafka.pauses, kafka.commits, kafka.commit_failures; gauge kafka.in_flight.
 */
export function kafkaRecords<T>(options: KafkaRecordsOptions<T>): KafkaSource<T> {
  const { topic, groupId } = options;
  const maxInFlight = options.maxInFlight ?? 1000;
  const resumeAt = options.resumeAt ?? Math.floor(maxInFlight / 2);
  if (!(maxInFlight >= 1) || !(resumeAt >= 0 && resumeAt < maxInFlight)) {
    throw new Error(
      `Need maxInFlight >= 1 and 0 <= resumeAt < maxInFlight, got ${maxInFlight} and ${resumeAt}`,
    );
  }
  const commitIntervalMs = options.commitIntervalMs ?? 100;
  const maxCommitFailures = options.maxCommitFailures ?? 10;
  const metrics = options.metrics ?? detachedMetrics();
  const labels = { topic };
  const counters = {
    consumed: metrics.counter('kafka.consumed', labels),
    delivered: metrics.counter('kafka.delivered', labels),
    deadLetters: metrics.counter('kafka.dead_letters', labels),
    skipped: metrics.counter('kafka.skipped', labels),
    pauses: metrics.counter('kafka.pauses', labels),
    commits: metrics.counter('kafka.commits', labels),
    commitFailures: metrics.counter('kafka.commit_failures', labels),
  };
  const inFlightGauge = metrics.gauge('kafka.in_flight', labels);
  const closing = new Set<Promise<Error | undefined>>();
  const where = `Kafka topic ${topic} (consumer group ${groupId})`;

  const observable = new Observable<Delivery<T>>((subscriber) => {
    const kafka = createKafka(options.connection);
    const consumer = kafka.consumer({
      groupId,
      allowAutoTopicCreation: false,
      sessionTimeout: options.sessionTimeoutMs ?? 30_000,
      maxWaitTimeInMs: options.maxWaitTimeMs ?? 100,
      retry: options.connection.retry ?? DEFAULT_RETRY,
    });
    // Leaves room for the record batch's framing within the dead-letter topic's message limit.
    const deadLetters = new KafkaPublisher({
      connection: options.connection,
      metrics,
      maxBatchBytes: DLQ_MAX_MESSAGE_BYTES - 64 * 1024,
    });
    const log = consumer.logger();
    // closed() waits for this subscription from now on (not before: a setup that throws leaves nothing to
    // wait for): its consumer is live until its teardown is done.
    let ended!: (error: Error | undefined) => void;
    closing.add(new Promise<Error | undefined>((resolve) => (ended = resolve)));

    let closed = false;
    let paused = false;
    let inFlight = 0;
    // The partitions this member owns since its last (re)join, with their acks. Replaced on a rebalance:
    // trackers of the previous generation then stop committing.
    let owned = new Map<number, PartitionAcks>();
    const dirty = new Set<number>();
    let commitTimer: NodeJS.Timeout | undefined;
    let committing: Promise<void> | undefined;
    let commitFailures = 0;
    let lastCommitError: Error | undefined;

    const fail = (error: unknown) => {
      if (closed) return;
      const message = error instanceof Error ? error.message : String(error);
      subscriber.error(new Error(`${where}: ${message}`, { cause: error }));
    };

    const pause = () => {
      paused = true;
      counters.pauses.inc();
      consumer.pause([{ topic }]);
    };

    /** A delivered record's place in the in-flight bound is free again. */
    const release = () => {
      inFlight--;
      inFlightGauge.set(inFlight);
      if (paused && inFlight <= resumeAt && !closed) {
        paused = false;
        consumer.resume([{ topic }]);
      }
    };
    /** The group may commit past a record. */
    const acked = (acks: PartitionAcks, partition: number, offset: number) => {
      if (owned.get(partition) === acks && acks.ack(offset)) {
        dirty.add(partition);
        scheduleCommit();
      }
    };

    const scheduleCommit = () => {
      if (commitTimer || closed) return;
      commitTimer = setTimeout(() => {
        commitTimer = undefined;
        void commit();
      }, commitIntervalMs);
    };

    // One commit at a time; partitions acked meanwhile wait for the next one.
    const commit = async (): Promise<void> => {
      while (committing) await committing;
      const current = owned;
      const offsets = [...dirty].flatMap((partition) => {
        const offset = current.get(partition)?.committable;
        return offset === undefined ? [] : [{ topic, partition, offset: String(offset) }];
      });
      dirty.clear();
      if (offsets.length === 0) return;
      committing = consumer.commitOffsets(offsets).then(
        () => {
          commitFailures = 0;
          lastCommitError = undefined;
          counters.commits.inc();
        },
        (error: Error) => {
          counters.commitFailures.inc();
          lastCommitError = error;
          // After a rebalance these offsets are someone else's to commit; otherwise try again later.
          if (owned !== current || REBALANCE_ERRORS.has((error as { type?: string }).type ?? '')) return;
          for (const { partition } of offsets) dirty.add(partition);
          if (++commitFailures >= maxCommitFailures) {
            fail(new Error(`${commitFailures} offset commits failed in a row, the last: ${error.message}`));
            return;
          }
          log.warn('Offset commit failed; retrying', { topic, groupId, error: error.message });
          scheduleCommit();
        },
      );
      try {
        await committing;
      } finally {
        committing = undefined;
      }
    };

    const rejoined = () => {
      owned = new Map();
      dirty.clear();
    };
    consumer.on(consumer.events.REBALANCING, () => {
      // Still the owner in the generation that is ending: commit what is acked before giving it up.
      const ending = owned;
      void commit().finally(() => {
        if (owned === ending) rejoined();
      });
    });
    const startOffsets = new Map(options.startOffsets);
    consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
      rejoined();
      // A consumer kafkajs restarted after a crash starts unpaused: it stays paused while the bound holds.
      if (paused) consumer.pause([{ topic }]);
      // kafkajs applies a seek before its next fetch of the partition, so nothing is read from elsewhere.
      for (const partition of payload.memberAssignment[topic] ?? []) {
        const offset = startOffsets.get(partition);
        if (offset === undefined) continue;
        startOffsets.delete(partition);
        consumer.seek({ topic, partition, offset: String(offset) });
      }
    });
    consumer.on(consumer.events.CRASH, ({ payload }) => {
      if (!payload.restart) fail(payload.error);
    });

    const deliver = (message: KafkaMessage, partition: number, acks: PartitionAcks) => {
      counters.consumed.inc();
      const offset = Number(message.offset);
      acks.deliver(offset);
      inFlight++;
      inFlightGauge.set(inFlight);
      const done = () => {
        release();
        acked(acks, partition, offset);
      };
      const key = message.key?.toString();
      const decoded = options.decode(message);
      if (decoded.kind === 'message') {
        counters.delivered.inc();
        subscriber.next(
          new KafkaDelivery(decoded.value, key, topic, partition, message.offset, release, () =>
            acked(acks, partition, offset),
          ),
        );
      } else if (decoded.kind === 'skip') {
        counters.skipped.inc();
        done();
      } else {
        counters.deadLetters.inc();
        const letter = deadLetter({
          source: topic,
          reason: decoded.reason,
          payload: message.value ?? new Uint8Array(),
          ...(decoded.error ? { error: decoded.error } : {}),
          ...(key !== undefined ? { key } : {}),
        });
        // The record counts as acked once its dead letter is durable.
        const written = (async () => {
          await deadLetters.publish(
            options.deadLetterTopic,
            'DeadLetter',
            letter,
            recordKey('DeadLetter', letter, ''),
          );
        })();
        written.then(done, (error: Error) =>
          fail(new Error(`writing a dead letter failed: ${error.message}`)),
        );
      }
    };

    const running = (async () => {
      await consumer.connect();
      await consumer.subscribe({ topics: [topic], fromBeginning: options.fromBeginning ?? true });
      await consumer.run({
        autoCommit: false,
        eachBatchAutoResolve: false,
        eachBatch: async ({ batch, resolveOffset, isRunning, isStale }) => {
          const { partition } = batch;
          let acks = owned.get(partition);
          if (!acks) owned.set(partition, (acks = new PartitionAcks()));
          let last: string | undefined;
          for (const message of batch.messages) {
            if (closed || paused || !isRunning() || isStale()) break;
            if (inFlight >= maxInFlight) {
              pause();
              break;
            }
            last = message.offset;
            deliver(message, partition, acks);
          }
          // Where kafkajs fetches next (past what was delivered); the commits are ours.
          if (last !== undefined) resolveOffset(last);
        },
      });
    })();
    running.catch((error: Error) => {
      const hint = (error as { type?: string }).type === 'UNKNOWN_TOPIC_OR_PARTITION' ? missingTopicHint : '';
      fail(new Error(`could not start consuming: ${error.message}${hint}`, { cause: error }));
    });

    const close = async () => {
      closed = true;
      clearTimeout(commitTimer);
      try {
        await running.catch(() => {});
        // Dead letters in flight settle (and so become committable) before the last commit.
        await deadLetters.flush().catch(() => {});
        await commit();
        // Acked records whose offsets the last commit could not save will be delivered again.
        if (dirty.size > 0 && lastCommitError)
          throw new Error(`its last offset commit failed: ${lastCommitError.message}`);
      } finally {
        await Promise.all([consumer.disconnect(), deadLetters.close()]);
      }
    };
    return () => {
      close().then(
        () => ended(undefined),
        (error: Error) =>
          ended(new Error(`Closing the consumer of ${where} failed: ${error.message}`, { cause: error })),
      );
    };
  });

  return Object.assign(observable, {
    closed: async () => {
      const errors = (await Promise.all(closing)).filter((error) => error !== undefined);
      if (errors[0]) throw errors[0];
    },
  });
}

// The group moved on: the commit's generation is over, and retrying it could overwrite a new owner's offset.
const REBALANCE_ERRORS = new Set(['REBALANCE_IN_PROGRESS', 'ILLEGAL_GENERATION', 'UNKNOWN_MEMBER_ID']);

const missingTopicHint = " (create the run's topics first: rxrl topics create --run <run>)";

class KafkaDelivery<T> implements Delivery<T> {
  private released = false;
  private acked = false;
  constructor(
    readonly value: T,
    readonly key: string | undefined,
    readonly topic: string,
    readonly partition: number,
    readonly offset: string,
    private readonly freeSlot: () => void,
    private readonly commitPast: () => void,
  ) {}

  release(): void {
    if (this.released) return;
    this.released = true;
    this.freeSlot();
  }

  ack(): void {
    if (this.acked) return;
    this.acked = true;
    this.release();
    this.commitPast();
  }
}
