/**
 * Producing to Kafka: {@link KafkaPublisher} validates, batches and sends records; {@link kafkaSink} is the
 * operator over it that publishes a stream of messages to the topic of one edge of a run.
 */
import { Observable, type OperatorFunction } from 'rxjs';
import { Partitioners, type IHeaders, type Message, type Producer } from 'kafkajs';
import type { MessageName } from '../../../schemas/index.ts';
import { detachedMetrics, type Metrics } from '../../metrics/metrics.ts';
import { validateMessage } from '../../validation.ts';
import { createKafka, DEFAULT_RETRY, type KafkaConnectionOptions } from './client.ts';
import { edgeTopic, recordKey, type Edge, type EDGES, type MessageOf } from './topics.ts';

export interface KafkaPublisherOptions {
  connection: KafkaConnectionOptions;
  /** Records per produce request (default 1000). */
  maxBatchRecords?: number;
  /**
   * Bytes per produce request (default 1,000,000). The broker refuses a partition's record batch over its
   * message.max.bytes (1 MiB by default), so a request never carries more than that in all.
   */
  maxBatchBytes?: number;
  /** How long a record may wait for its batch to fill before it is sent (default 5 ms). */
  lingerMs?: number;
  /** Fail a batch the broker has not acknowledged after this long, retries included (default 120 s). */
  deliveryTimeoutMs?: number;
  /** Idempotent producer (default true): broker-side retries never write a record twice. */
  idempotent?: boolean;
  metrics?: Metrics;
}

/**
 * A record ready for the wire: the value is already encoded. A string value is written into the request
 * as UTF-8 by kafkajs itself, which saves a Buffer per record (and the garbage collections they cause).
 */
export interface OutgoingRecord {
  key: string;
  value: Buffer | string;
  headers?: IHeaders;
}

interface OutgoingBatch {
  byTopic: Map<string, Message[]>;
  records: number;
  bytes: number;
  done: Promise<void>;
  resolve: () => void;
  reject: (error: Error) => void;
}

/**
 * Sends records with acks from all in-sync replicas (acks = -1), in batches: a record waits at most
 * `lingerMs` for others to join it, and one request is in flight at a time, which keeps the order of
 * records and lets the idempotent producer work. `publish` resolves once the record's batch is durable.
 *
 * Retry policy: the kafkajs producer retries retriable errors (leader moves, a broker restarting) with the
 * connection's backoff until `deliveryTimeoutMs`; then, or on any other error, the publisher fails for good
 * and rejects everything pending: the caller did not get an acknowledgement, so it must not ack its input.
 */
export class KafkaPublisher {
  private readonly producer: Producer;
  private readonly maxBatchRecords: number;
  private readonly maxBatchBytes: number;
  private readonly lingerMs: number;
  private readonly deliveryTimeoutMs: number;
  private readonly metrics: Metrics;
  private connected: Promise<void> | undefined;
  private open: OutgoingBatch | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;
  private readonly sealed: OutgoingBatch[] = [];
  private sending = false;
  private last: OutgoingBatch | undefined;
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;
  private unacknowledgedBytes = 0;
  private drained: (() => void)[] = [];

  constructor(options: KafkaPublisherOptions) {
    const idempotent = options.idempotent ?? true;
    const backoff = options.connection.retry ?? DEFAULT_RETRY;
    this.producer = createKafka(options.connection).producer({
      createPartitioner: Partitioners.DefaultPartitioner,
      allowAutoTopicCreation: false,
      idempotent,
      maxInFlightRequests: idempotent ? 1 : undefined,
      // Bounded by deliveryTimeoutMs instead of a count, as the Java producer does.
      retry: { ...backoff, retries: Number.MAX_SAFE_INTEGER },
    });
    this.maxBatchRecords = options.maxBatchRecords ?? 1000;
    this.maxBatchBytes = options.maxBatchBytes ?? 1_000_000;
    this.lingerMs = options.lingerMs ?? 5;
    this.deliveryTimeoutMs = options.deliveryTimeoutMs ?? 120_000;
    this.metrics = options.metrics ?? detachedMetrics();
  }

  /**
   * Validates a message and queues it; resolves once it is durable. Throws at once if the message fails
   * its schema: that is a bug in the stage that made it, not data to dead-letter.
   */
  publish<N extends MessageName>(
    topic: string,
    schema: N,
    message: MessageOf<N>,
    key: string,
  ): Promise<void> {
    const checked = validateMessage(schema, message);
    if (!checked.ok) {
      throw new Error(`Refusing to publish an invalid ${schema} to ${topic}: ${checked.error.message}`, {
        cause: checked.error,
      });
    }
    return this.publishRecord(topic, { key, value: JSON.stringify(message) });
  }

  /** Queues an encoded record as is (weight chunks); resolves once it is durable. */
  publishRecord(topic: string, record: OutgoingRecord): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) {
      return Promise.reject(new Error(`Publishing to ${topic} after the publisher was closed`));
    }
    const { value } = record;
    const bytes =
      (typeof value === 'string' ? Buffer.byteLength(value) : value.length) + Buffer.byteLength(record.key);
    if (bytes > this.maxBatchBytes) {
      return Promise.reject(
        new Error(
          `A record of ${bytes} bytes for ${topic} is over the ${this.maxBatchBytes}-byte limit of one request: ` +
            'split it (as weights are chunked), or raise the topic max.message.bytes and maxBatchBytes together',
        ),
      );
    }
    let batch = this.open;
    if (batch && batch.bytes + bytes > this.maxBatchBytes) {
      this.seal();
      batch = undefined;
    }
    if (!batch) {
      batch = this.open = this.last = newBatch();
      this.lingerTimer = setTimeout(() => this.seal(), this.lingerMs);
    }
    let messages = batch.byTopic.get(topic);
    if (!messages) batch.byTopic.set(topic, (messages = []));
    messages.push(record);
    batch.records++;
    batch.bytes += bytes;
    this.unacknowledgedBytes += bytes;
    if (batch.records >= this.maxBatchRecords) this.seal();
    return batch.done;
  }

  /**
   * Bytes published and not acknowledged yet. A caller that encodes ahead of the broker can wait for
   * `drain` instead of holding every encoded record in memory (see kafkaSink).
   */
  get backlogBytes(): number {
    return this.unacknowledgedBytes;
  }

  /** Resolves once a batch in flight is acknowledged (or the publisher failed). */
  drain(): Promise<void> {
    if (this.failure || this.unacknowledgedBytes === 0) return Promise.resolve();
    return new Promise((resolve) => this.drained.push(resolve));
  }

  private wakeDrained(): void {
    const waiting = this.drained;
    this.drained = [];
    for (const wake of waiting) wake();
  }

  /** Sends whatever waits and resolves once every record published so far is durable. */
  async flush(): Promise<void> {
    this.seal();
    await this.last?.done;
    if (this.failure) throw this.failure;
  }

  /** Flushes, then disconnects the producer. Rejects if anything published could not be delivered. */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      const flushed = await this.flush().then(
        () => undefined,
        (error: Error) => error,
      );
      if (this.connected) await this.producer.disconnect();
      if (flushed) throw flushed;
    })());
  }

  private seal(): void {
    clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    if (!this.open) return;
    this.sealed.push(this.open);
    this.open = undefined;
    this.pump();
  }

  private pump(): void {
    if (this.sending || this.failure) return;
    const batch = this.sealed.shift();
    if (!batch) return;
    this.sending = true;
    this.send(batch).then(
      () => {
        this.sending = false;
        for (const [topic, messages] of batch.byTopic) {
          this.metrics.counter('kafka.produced', { topic }).inc(messages.length);
        }
        this.unacknowledgedBytes -= batch.bytes;
        batch.resolve();
        this.wakeDrained();
        this.pump();
      },
      (error: Error) => this.fail(batch, error),
    );
  }

  private async send(batch: OutgoingBatch): Promise<void> {
    this.connected ??= this.producer.connect();
    const topicMessages = [...batch.byTopic].map(([topic, messages]) => ({ topic, messages }));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(`no acknowledgement after ${this.deliveryTimeoutMs} ms; is the broker reachable?`),
          ),
        this.deliveryTimeoutMs,
      );
    });
    try {
      await Promise.race([
        this.connected.then(() => this.producer.sendBatch({ acks: -1, topicMessages })),
        timeout,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  private fail(batch: OutgoingBatch, cause: Error): void {
    const topics = [...batch.byTopic.keys()].join(', ');
    const hint =
      (cause as { type?: string }).type === 'UNKNOWN_TOPIC_OR_PARTITION'
        ? " (create the run's topics first: rxrl topics create --run <run>)"
        : '';
    this.failure = new Error(
      `Could not publish ${batch.records} records to ${topics}: ${cause.message}${hint}`,
      {
        cause,
      },
    );
    clearTimeout(this.lingerTimer);
    for (const pending of [batch, ...this.sealed.splice(0), ...(this.open ? [this.open] : [])]) {
      pending.reject(this.failure);
    }
    this.open = undefined;
    this.wakeDrained();
  }
}

function newBatch(): OutgoingBatch {
  let resolve!: () => void;
  let reject!: (error: Error) => void;
  const done = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A caller may drop the promise (a dead letter whose source was unsubscribed): the failure is kept and
  // rethrown by flush() and close(), so it must not also crash the process as an unhandled rejection.
  done.catch(() => {});
  return { byTopic: new Map(), records: 0, bytes: 0, done, resolve, reject };
}

export type EdgeMessage<E extends Edge> = MessageOf<(typeof EDGES)[E]>;

export interface KafkaSinkOptions<E extends Edge> extends KafkaPublisherOptions {
  run: string;
  edge: E;
}

// Messages encoded per turn of the event loop: a burst upstream (a group of rollouts, a whole array) then
// does not encode everything before the first request goes out; sends and encoding overlap.
const ENCODE_CHUNK = 256;
// Encoding stops while this many request-sized batches are encoded and not acknowledged: a source that
// outruns the broker then waits as messages, not as encoded bytes that survive garbage collections (in
// bench/kafka, encoding all 20,000 rollouts ahead of the broker cost a third of the transport's CPU).
const ENCODED_AHEAD_BATCHES = 2;

/**
 * Publishes each message to the topic of `edge` in `run`, keyed by its group id (by run for versions and
 * metrics), and re-emits it once it is durable, in order: downstream can ack what the message came from.
 *
 * ```
 * source:  --a--b--c--|
 * output:  ------a-b----c|     (each once acknowledged by the broker; completes after the last, disconnected)
 * ```
 *
 * A message that fails its schema errors the stream with the field at fault. Memory is bounded by the
 * source: a stage that outruns the broker queues here (a Kafka source upstream bounds its in-flight records).
 */
export function kafkaSink<E extends Edge>(
  options: KafkaSinkOptions<E>,
): OperatorFunction<EdgeMessage<E>, EdgeMessage<E>> {
  const { topic, schema } = edgeTopic(options.run, options.edge);
  return (source) =>
    new Observable<EdgeMessage<E>>((subscriber) => {
      const publisher = new KafkaPublisher(options);
      const fail = (error: unknown) => subscriber.error(error);
      let queue: (EdgeMessage<E> | undefined)[] = [];
      let head = 0;
      let sourceDone = false;
      let scheduled: NodeJS.Immediate | undefined;

      const encodedAhead = ENCODED_AHEAD_BATCHES * (options.maxBatchBytes ?? 1_000_000);
      let waiting = false;
      const encode = () => {
        scheduled = undefined;
        waiting = false;
        for (const end = Math.min(queue.length, head + ENCODE_CHUNK); head < end; head++) {
          if (publisher.backlogBytes >= encodedAhead) {
            waiting = true;
            publisher.drain().then(() => {
              if (!subscriber.closed) encode();
            }, fail);
            return;
          }
          const message = queue[head]!;
          queue[head] = undefined;
          let durable: Promise<void>;
          try {
            durable = publisher.publish(topic, schema, message, recordKey(schema, message, options.run));
          } catch (error) {
            fail(error);
            return;
          }
          durable.then(() => subscriber.next(message), fail);
        }
        if (head < queue.length) {
          scheduled = setImmediate(encode);
          return;
        }
        queue = [];
        head = 0;
        // Every record's emission was registered before close() resolves, so completion comes last.
        if (sourceDone) publisher.close().then(() => subscriber.complete(), fail);
      };

      const subscription = source.subscribe({
        next: (message) => {
          queue.push(message);
          if (!waiting) scheduled ??= setImmediate(encode);
        },
        error: fail,
        complete: () => {
          sourceDone = true;
          if (!waiting) scheduled ??= setImmediate(encode);
        },
      });
      return () => {
        clearImmediate(scheduled);
        subscription.unsubscribe();
        publisher.close().catch(() => {});
      };
    });
}
