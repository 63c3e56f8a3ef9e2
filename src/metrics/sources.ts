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
  /**
   * A connection that brings nothing for this long is lost (a cut that sent no FIN: a laptop asleep, a
   * dropped VPN). The server sends a comment every 15 s by default. Default 60,000.
   */
  idleMs?: number;
}

/**
 * An answer that another attempt would not change: a 4xx (wrong address, a refused Host), a page that is
 * not the event stream (a login proxy's), a metric that is not JSON.
 */
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
  const idleMs = options.idleMs ?? 60_000;
  return new Observable<Metric>((subscriber) => {
    const url = streamUrl(address, options.filter);
    const abort = new AbortController();
    let done = false;
    let lastEventId: string | undefined;
    // Whether the stream has been read (only then is a lost connection opened again), and failures in a row.
    let connected = false;
    let failures = 0;
    const finish = () => {
      done = true;
      subscriber.complete();
      abort.abort();
    };
    /** One connection, read until the server ends the stream (resolves) or it is lost (throws). */
    const read = async (): Promise<void> => {
      // Its own abort: an idle connection (no heartbeat for idleMs: a cut that sent no FIN) is lost.
      const connection = new AbortController();
      const stop = () => connection.abort();
      abort.signal.addEventListener('abort', stop);
      let idle: NodeJS.Timeout | undefined;
      const awake = () => {
        clearTimeout(idle);
        idle = setTimeout(() => connection.abort(new Error(`no data for ${idleMs / 1000} s`)), idleMs);
      };
      const parser = createParser({
        onEvent: (event) => {
          if (done) return;
          if (event.event === 'metric') {
            let metric: Metric;
            try {
              metric = JSON.parse(event.data) as Metric;
            } catch {
              throw new RefusedError(
                `${url.origin} sent a metric that is not JSON: ${event.data.slice(0, 200)}`,
              );
            }
            subscriber.next(metric);
          } else if (event.event === 'reset') {
            // What came before is gone: ask for everything after a reconnection.
            lastEventId = undefined;
            options.onReset?.();
          } else if (event.event === 'end' || (event.event === 'replayed' && !options.follow)) finish();
          if (event.id !== undefined) lastEventId = event.id;
          connected = true;
          failures = 0;
        },
      });
      try {
        awake();
        const response = await fetch(url, {
          signal: connection.signal,
          headers: { accept: 'text/event-stream', ...(lastEventId ? { 'last-event-id': lastEventId } : {}) },
        });
        const type = response.headers.get('content-type') ?? '';
        if (!response.ok || !response.body || !type.startsWith('text/event-stream')) {
          const text = `${url.origin} answered ${response.status} ${response.statusText}${response.ok ? ` (${type || 'no content type'}, not an event stream)` : ''} for ${url.pathname}`;
          throw response.status < 500 ? new RefusedError(text) : new Error(text);
        }
        const decoder = new TextDecoder();
        for await (const chunk of response.body) {
          awake();
          parser.feed(decoder.decode(chunk as Uint8Array, { stream: true }));
          if (done) return;
        }
        if (!done) throw new Error(`${url.origin} closed the stream before its end`);
      } catch (error) {
        // An idle connection aborted: say why, not "aborted".
        throw connection.signal.aborted && !abort.signal.aborted ? connection.signal.reason : error;
      } finally {
        clearTimeout(idle);
        abort.signal.removeEventListener('abort', stop);
      }
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
    })().catch((error: unknown) => {
      // A callback that threw (onReconnect, onReset, a subscriber's): the stream ends with it.
      done = true;
      abort.abort();
      subscriber.error(error);
    });
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
