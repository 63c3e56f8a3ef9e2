/**
 * Where a run's metrics can be read from, each as an Observable<Metric>: a running process's metrics
 * server (its Server-Sent Events), and the run's Kafka topic `<run>.metrics`. (A metrics.jsonl file:
 * streams.ts.) Without `follow` each completes once it has given what was there when it was subscribed.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { createParser } from 'eventsource-parser';
import { Observable } from 'rxjs';
import type { Metric } from '../../schemas/index.ts';
import type { KafkaConnectionOptions } from '../transport/kafka/client.ts';
import { createKafka } from '../transport/kafka/client.ts';
import { decodeMessage, kafkaRecords } from '../transport/kafka/source.ts';
import { parseTopicName, topicName } from '../transport/kafka/topics.ts';
import type { MetricFilter } from './streams.ts';

/** `http://host:port` (or the full `.../metrics/stream` address) to the stream's URL with filters. */
export function streamUrl(address: string, filter: MetricFilter = {}): URL {
  const url = new URL(address);
  if (!url.pathname.endsWith('/metrics/stream')) {
    url.pathname = `${url.pathname.replace(/\/+$/, '')}/metrics/stream`;
  }
  const names = filter.name === undefined ? [] : Array.isArray(filter.name) ? filter.name : [filter.name];
  for (const name of names) {
    if (typeof name !== 'string') throw new Error('A metrics server filters by name prefix, not by pattern');
    url.searchParams.append('name', name);
  }
  if (filter.run !== undefined) url.searchParams.set('run', filter.run);
  url.searchParams.set('completions', '0');
  return url;
}

export interface ServerSourceOptions {
  /** Keep reading live metrics (until the server says the stream ended); otherwise stop after the replay. */
  follow?: boolean;
  filter?: MetricFilter;
  /** Called when the server says what it had is gone (`reset`: the file it follows was started over). */
  onReset?: () => void;
  /**
   * With `follow`: a connection lost before the server's `end` (the server restarted, the network cut) is
   * opened again after this many ms, doubling on each failure up to 10 times it, asking with Last-Event-ID
   * for only what was missed, as a browser's EventSource does (a restarted server sends `reset`, then all
   * it has). Default 1000; 0: a lost connection is an error.
   */
  reconnectMs?: number;
  /** Failed attempts in a row after which a lost connection is an error (default 30). */
  reconnectAttempts?: number;
  /** Hears of each reconnection attempt: why the connection was lost, the attempt (from 1), the wait. */
  onReconnect?: (reason: string, attempt: number, delayMs: number) => void;
}

/** An answer of the server that another attempt would not change (a 4xx: wrong address, refused Host). */
class RefusedError extends Error {}

/**
 * The metrics of a running process's metrics server (see server.ts): what it has kept, then with `follow`
 * those published from now on. Completes on the server's `end` event. A first connection that fails, or an
 * answer other than the stream, is an error; with `follow`, a connection lost after that is opened again
 * (ServerSourceOptions.reconnectMs), without it the loss is an error.
 */
export function metricsFromServer(address: string, options: ServerSourceOptions = {}): Observable<Metric> {
  const reconnectMs = options.reconnectMs ?? 1000;
  const attempts = options.reconnectAttempts ?? 30;
  return new Observable<Metric>((subscriber) => {
    const url = streamUrl(address, options.filter);
    const abort = new AbortController();
    let done = false;
    let lastEventId: string | undefined;
    // Whether a connection has been made (only then is a lost one opened again), and failures in a row.
    let connected = false;
    let failures = 0;
    const finish = () => {
      done = true;
      subscriber.complete();
      abort.abort();
    };
    /** One connection, read until the server ends the stream (resolves) or it is lost (throws). */
    const read = async (): Promise<void> => {
      const parser = createParser({
        onEvent: (event) => {
          if (done) return;
          if (event.id !== undefined) lastEventId = event.id;
          if (event.event === 'metric') subscriber.next(JSON.parse(event.data) as Metric);
          else if (event.event === 'reset') options.onReset?.();
          else if (event.event === 'end' || (event.event === 'replayed' && !options.follow)) finish();
        },
      });
      const response = await fetch(url, {
        signal: abort.signal,
        headers: { accept: 'text/event-stream', ...(lastEventId ? { 'last-event-id': lastEventId } : {}) },
      });
      if (!response.ok || !response.body) {
        const text = `${url.origin} answered ${response.status} ${response.statusText} for ${url.pathname}`;
        throw response.status >= 400 && response.status < 500 ? new RefusedError(text) : new Error(text);
      }
      connected = true;
      failures = 0;
      const decoder = new TextDecoder();
      for await (const chunk of response.body) {
        parser.feed(decoder.decode(chunk as Uint8Array, { stream: true }));
        if (done) return;
      }
      if (!done) throw new Error(`${url.origin} closed the stream before its end`);
    };
    (async () => {
      while (!done) {
        try {
          await read();
        } catch (error) {
          if (done || abort.signal.aborted) return;
          const cause = ((error as Error).cause as Error | undefined)?.message;
          const reason = `${(error as Error).message}${cause ? ` (${cause})` : ''}`;
          const again = options.follow && connected && reconnectMs > 0 && !(error instanceof RefusedError);
          if (!again || ++failures > attempts) {
            const gaveUp = again ? ` (gave up after ${attempts} attempts to reconnect)` : '';
            subscriber.error(new Error(`Reading metrics from ${url.origin}: ${reason}${gaveUp}`));
            return;
          }
          const wait = Math.min(reconnectMs * 2 ** (failures - 1), reconnectMs * 10);
          options.onReconnect?.(`lost ${url.origin}: ${reason}`, failures, wait);
          await delay(wait, undefined, { signal: abort.signal }).catch(() => undefined);
        }
      }
    })();
    return () => {
      done = true;
      abort.abort();
    };
  });
}

export interface KafkaMetricsOptions {
  connection: KafkaConnectionOptions;
  /** `<run>.metrics`. */
  topic: string;
  /** Keep reading new records; otherwise stop once the records there when it started are read. */
  follow?: boolean;
  /** Records that are not valid metrics (skipped; a viewer writes no dead letters). Default: a warning. */
  onInvalid?: (reason: string) => void;
}

/**
 * The metrics on a run's Kafka topic, from the oldest record held, read by a consumer group of its own that
 * is deleted afterwards (so no real consumer group moves). Records are validated with the Metric schema,
 * like {@link kafkaSource} does; invalid ones are reported and skipped rather than dead-lettered.
 */
export function metricsFromKafka(
  options: KafkaMetricsOptions,
): Observable<Metric> & { closed(): Promise<void> } {
  const parsed = parseTopicName(options.topic);
  if (!parsed || parsed.edge !== 'metrics') {
    throw new Error(`${options.topic} is not a run's metrics topic (<run>.metrics)`);
  }
  const onInvalid = options.onInvalid ?? ((reason: string) => console.warn(`${options.topic}: ${reason}`));
  const closing = new Set<Promise<void>>();
  const observable = new Observable<Metric>((subscriber) => {
    const groupId = `rxrl-metrics-${randomUUID()}`;
    let stopped = false;
    let remaining = Infinity;
    let consumed = 0;
    const records = kafkaRecords<Metric>({
      connection: options.connection,
      groupId,
      topic: options.topic,
      deadLetterTopic: topicName(parsed.run, 'dlq'),
      fromBeginning: true,
      decode: (message) => {
        consumed++;
        if (consumed >= remaining) setImmediate(() => subscriber.complete());
        const decoded = decodeMessage('Metric', message.value);
        if (decoded.kind !== 'invalid') return decoded;
        onInvalid(`offset ${message.offset}: ${decoded.reason}`);
        return { kind: 'skip' };
      },
    });
    let subscription: { unsubscribe(): void } | undefined;
    (async () => {
      if (!options.follow) {
        const admin = createKafka(options.connection).admin();
        await admin.connect();
        try {
          const offsets = await admin.fetchTopicOffsets(options.topic);
          remaining = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
        } finally {
          await admin.disconnect();
        }
        if (remaining === 0) {
          subscriber.complete();
          return;
        }
      }
      if (stopped) return;
      subscription = records.subscribe({
        next: (delivery) => {
          delivery.ack();
          subscriber.next(delivery.value);
        },
        error: (error: unknown) => subscriber.error(error),
      });
    })().catch((error: unknown) => subscriber.error(error));
    return () => {
      stopped = true;
      subscription?.unsubscribe();
      // The consumer group was ours alone: gone once the consumer has left it.
      const cleanup = records
        .closed()
        .catch(() => undefined)
        .then(async () => {
          const admin = createKafka(options.connection).admin();
          await admin.connect();
          await admin.deleteGroups([groupId]).catch(() => undefined);
          await admin.disconnect();
        })
        .catch(() => undefined);
      closing.add(cleanup);
    };
  });
  /** Resolves once every subscription's consumer has left and its group is deleted. */
  return Object.assign(observable, { closed: async () => void (await Promise.all(closing)) });
}
