/**
 * An HTTP server for watching a run live:
 *
 * - `GET /metrics/stream`: Server-Sent Events. Each metric is an event `metric` whose data is the Metric as
 *   JSON; each scored completion an event `completion` ({@link CompletionSummary}). A new subscriber first
 *   gets what was published before it came, in order (each per-step value series up to its last
 *   `history` points, the latest value of each counter and gauge, the last `completionHistory`
 *   completions), then an event `replayed`, then the live events. Query filters: `name` (a
 *   prefix; repeat it for several), `run`, and `completions=0` to leave completions out. Every event has an
 *   id (`<server epoch>-<n>`), so a client that reconnects with Last-Event-ID (as EventSource does) gets
 *   only what it missed; one whose id came from another server (a run restarted on the same port) gets an
 *   event `reset` and then everything. When the metrics stream ends, or the server closes, subscribers get
 *   an event `end`.
 * - `GET /metrics`: the Prometheus text exposition ({@link PrometheusExporter}).
 * - `GET /`: the live dashboard (static HTML and JS, charts drawn with uPlot served from node_modules).
 * - `GET /healthz`: `{"status":"ok", ...}`.
 *
 * Listening on a loopback address (the default, 127.0.0.1), it answers only requests whose Host header
 * names this machine (localhost, a *.localhost name, a loopback address) or one of `allowedHosts`, as
 * Jupyter and Vite do: a web page whose domain was rebound to 127.0.0.1 (DNS rebinding) could otherwise
 * read the run's prompts and completions from the browser. Listening on another address, the server is
 * meant to be reached from other machines, under names it cannot know, and answers every Host.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP, type AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Observable, Subscription } from 'rxjs';
import type { Metric, ScoredRollout } from '../../schemas/index.ts';
import { PrometheusExporter } from './prometheus.ts';
import { metricMatches, type MetricFilter } from './streams.ts';
import { seriesKey } from './table.ts';

/** What the stream says about one scored completion. */
export interface CompletionSummary {
  /** The policy version that generated it. */
  step: number;
  prompt: string;
  completion: string;
  rewards: Record<string, number | null>;
  reward: number | null;
  tokens: number;
  finishReason: string;
  /** When the server saw it (ms since the epoch). */
  time: number;
}

export interface MetricsServerOptions {
  /**
   * Per-step values (kind "value") kept for late subscribers, per series (default 10,000: the whole curve
   * of most runs). Of counters and gauges, only the latest value of each series is kept.
   */
  history?: number;
  /** Completions kept for late subscribers (default 100). */
  completionHistory?: number;
  /** Prompts and completions longer than this are cut (default 4,000 characters). */
  maxTextChars?: number;
  /** Prefix of the Prometheus names (default "rxrl"). */
  prometheusPrefix?: string;
  /** A comment line is sent this often to keep idle connections open (default 15 s). */
  heartbeatMs?: number;
  /** A subscriber this far behind (bytes not yet sent) is disconnected; it may reconnect (default 16 MiB). */
  maxBufferedBytes?: number;
  /**
   * Host names (without port) answered besides this machine's own when listening on a loopback address
   * (see the module comment): a name in /etc/hosts or an SSH tunnel's.
   */
  allowedHosts?: readonly string[];
}

export interface MetricsServerAddress {
  host: string;
  port: number;
  /** `http://host:port` (the dashboard; the stream is at `${url}/metrics/stream`). */
  url: string;
}

interface StreamEvent {
  id: number;
  /** The text sent on the wire: `id`, `event` and `data` lines. */
  wire: string;
  metric?: Metric;
}

interface Subscriber {
  res: ServerResponse;
  filter: MetricFilter;
  completions: boolean;
  /** Live events held while the replay is written (it waits for the socket to drain between chunks). */
  held?: string[];
  heldChars?: number;
  /** Writes the rest of the replay at once, then `replayed` and the held events (the server is closing). */
  finishReplay?: () => void;
}

/** How long close() waits for subscribers to take what was written to them before it cuts them off. */
const CLOSE_FLUSH_MS = 2_000;

/** Tags a server's event ids; a new one on reset(). */
const newEpoch = (): string => `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;

/** How much of a replay is written at a time (then it waits for the socket to drain). */
const REPLAY_CHUNK_CHARS = 256 * 1024;

/** The last `capacity` items pushed, oldest first. */
class Ring<T> {
  private readonly items: T[] = [];
  private start = 0;
  constructor(private readonly capacity: number) {}
  push(item: T): void {
    if (this.capacity <= 0) return;
    if (this.items.length < this.capacity) this.items.push(item);
    else {
      this.items[this.start] = item;
      this.start = (this.start + 1) % this.capacity;
    }
  }
  toArray(): T[] {
    return [...this.items.slice(this.start), ...this.items.slice(0, this.start)];
  }
  clear(): void {
    this.items.length = 0;
    this.start = 0;
  }
}

const resolveModule = createRequire(import.meta.url).resolve;
const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));
const STATIC: Record<string, { file: string; type: string }> = {
  '/': { file: here('./dashboard/index.html'), type: 'text/html; charset=utf-8' },
  '/dashboard.js': {
    file: here('./dashboard/dashboard.js'),
    type: 'text/javascript; charset=utf-8',
  },
  '/dashboard.css': {
    file: here('./dashboard/dashboard.css'),
    type: 'text/css; charset=utf-8',
  },
  '/vendor/uPlot.iife.min.js': {
    file: resolveModule('uplot/dist/uPlot.iife.min.js'),
    type: 'text/javascript; charset=utf-8',
  },
  '/vendor/uPlot.min.css': {
    file: resolveModule('uplot/dist/uPlot.min.css'),
    type: 'text/css; charset=utf-8',
  },
};
STATIC['/index.html'] = STATIC['/']!;

function truncate(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

export function summarizeCompletion(s: ScoredRollout, maxChars = 4000): CompletionSummary {
  return {
    step: s.policyVersion,
    prompt: truncate(s.prompt.text, maxChars),
    completion: truncate(s.completion, maxChars),
    rewards: s.rewards,
    reward: s.reward,
    tokens: s.completionTokenIds.length,
    finishReason: s.finishReason,
    time: Date.now(),
  };
}

/** See the module comment. Subscribes to its sources when created, so history builds up before `listen`. */
export class MetricsServer {
  readonly exporter: PrometheusExporter;
  private readonly server: Server;
  private readonly subscriptions: Subscription[] = [];
  /** Per-step values, a ring per series; counters and gauges, the latest of each series. */
  private readonly valueHistory = new Map<string, Ring<StreamEvent>>();
  private readonly latestTotals = new Map<string, StreamEvent>();
  private readonly completionHistory: Ring<StreamEvent>;
  private readonly subscribers = new Set<Subscriber>();
  private readonly options: Required<MetricsServerOptions>;
  /** allowedHosts as compared (hostName). */
  private readonly allowedHosts: ReadonlySet<string>;
  private readonly heartbeat: NodeJS.Timeout;
  private nextId = 1;
  /**
   * Tags this server's event ids (`<epoch>-<n>`): a client that reconnects with the id of an earlier
   * server's event (a run restarted on the same port) gets everything, after a `reset` event, instead
   * of nothing up to an id that meant another stream.
   */
  private epoch = newEpoch();
  private published = 0;
  private ended = false;
  private address: MetricsServerAddress | undefined;

  constructor(
    metrics: Observable<Metric>,
    completions?: Observable<ScoredRollout>,
    options: MetricsServerOptions = {},
  ) {
    this.options = {
      history: options.history ?? 10_000,
      completionHistory: options.completionHistory ?? 100,
      maxTextChars: options.maxTextChars ?? 4000,
      prometheusPrefix: options.prometheusPrefix ?? 'rxrl',
      heartbeatMs: options.heartbeatMs ?? 15_000,
      maxBufferedBytes: options.maxBufferedBytes ?? 16 * 1024 * 1024,
      allowedHosts: options.allowedHosts ?? [],
    };
    this.allowedHosts = new Set(this.options.allowedHosts.map(hostName));
    this.completionHistory = new Ring(this.options.completionHistory);
    this.exporter = new PrometheusExporter({ prefix: this.options.prometheusPrefix });
    this.server = createServer((req, res) => this.handle(req, res));
    this.heartbeat = setInterval(() => {
      for (const s of this.subscribers) this.write(s, ': keep-alive\n\n');
    }, this.options.heartbeatMs);
    this.heartbeat.unref();

    this.subscriptions.push(
      metrics.subscribe({
        next: (m) => this.onMetric(m),
        error: (error: unknown) => this.end(error instanceof Error ? error.message : String(error)),
        complete: () => this.end(),
      }),
    );
    if (completions) {
      this.subscriptions.push(
        completions.subscribe({
          next: (s) => this.onCompletion(s),
          error: () => undefined,
        }),
      );
    }
  }

  /** Starts listening (port 0: a free port) and resolves with where. */
  listen(port = 0, host = '127.0.0.1'): Promise<MetricsServerAddress> {
    return new Promise((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        const address = this.server.address() as AddressInfo;
        const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
        this.address = { host: address.address, port: address.port, url: `http://${shown}:${address.port}` };
        resolve(this.address);
      });
    });
  }

  /** Where it listens, once listening. */
  get url(): string | undefined {
    return this.address?.url;
  }

  /** Metrics seen so far (including those no longer in the history). */
  get count(): number {
    return this.published;
  }

  /** Stops listening: subscribers get `end` and are disconnected; the sources are unsubscribed. */
  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const s of this.subscriptions) s.unsubscribe();
    this.end();
    // Each subscriber gets the rest of its replay and `end`; the server waits (a little) for them to go out.
    const flushed = [...this.subscribers].map((s) => {
      s.finishReplay?.();
      return new Promise<void>((resolve) => s.res.end(resolve));
    });
    this.subscribers.clear();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(flushed),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_FLUSH_MS))),
    ]);
    clearTimeout(timer);
    if (!this.server.listening) return;
    await new Promise<void>((resolve, reject) => {
      this.server.close((error) => (error ? reject(error) : resolve()));
      this.server.closeAllConnections();
    });
  }

  /**
   * Forgets what was published (a followed file started over by a new run): late subscribers get only
   * what comes next, /metrics drops the old series, and connected subscribers get an event `reset`.
   */
  reset(): void {
    this.valueHistory.clear();
    this.latestTotals.clear();
    this.completionHistory.clear();
    this.exporter.clear();
    // Ids from before mean nothing now: a client reconnecting with one gets `reset` and everything.
    this.epoch = newEpoch();
    const wire = this.frame(undefined, 'reset', '{}');
    for (const s of this.subscribers) this.write(s, wire);
  }

  private onMetric(metric: Metric): void {
    this.published++;
    this.exporter.update(metric);
    const id = this.nextId++;
    const event: StreamEvent = { id, wire: this.frame(id, 'metric', JSON.stringify(metric)), metric };
    const key = `${metric.run} ${seriesKey(metric)}`;
    if (metric.kind === 'value') {
      let ring = this.valueHistory.get(key);
      if (!ring) this.valueHistory.set(key, (ring = new Ring(this.options.history)));
      ring.push(event);
    } else this.latestTotals.set(`${metric.kind} ${key}`, event);
    for (const s of this.subscribers) if (metricMatches(metric, s.filter)) this.write(s, event.wire);
  }

  private onCompletion(sample: ScoredRollout): void {
    const id = this.nextId++;
    const summary = summarizeCompletion(sample, this.options.maxTextChars);
    const event: StreamEvent = { id, wire: this.frame(id, 'completion', JSON.stringify(summary)) };
    this.completionHistory.push(event);
    for (const s of this.subscribers) if (s.completions) this.write(s, event.wire);
  }

  private end(error?: string): void {
    if (this.ended) return;
    this.ended = true;
    const wire = this.frame(undefined, 'end', JSON.stringify(error ? { error } : {}));
    for (const s of this.subscribers) this.write(s, wire);
  }

  private write(s: Subscriber, text: string): void {
    if (s.held) {
      s.held.push(text);
      s.heldChars = (s.heldChars ?? 0) + text.length;
      // A client that stopped reading mid-replay: dropped once what waits for it passes the limit.
      if (s.heldChars > this.options.maxBufferedBytes) this.dropSlow(s);
      return;
    }
    if (s.res.writableLength > this.options.maxBufferedBytes) {
      this.dropSlow(s);
      return;
    }
    s.res.write(text);
  }

  /** Too slow: dropped rather than holding the run's memory; EventSource reconnects with Last-Event-ID. */
  private dropSlow(s: Subscriber): void {
    this.subscribers.delete(s);
    delete s.held;
    delete s.finishReplay;
    s.res.destroy();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const refused = this.refusedHost(req.headers.host);
    if (refused !== undefined) {
      res.writeHead(403, { 'content-type': 'text/plain' }).end(`${refused}\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('Method not allowed\n');
      return;
    }
    try {
      switch (url.pathname) {
        case '/metrics/stream':
          return this.stream(req, res, url);
        case '/metrics':
          void this.exporter.metrics().then(
            (text) => res.writeHead(200, { 'content-type': this.exporter.contentType }).end(text),
            (error: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${error.message}\n`),
          );
          return;
        case '/healthz':
          res.writeHead(200, { 'content-type': 'application/json' }).end(
            JSON.stringify({
              status: 'ok',
              metrics: this.published,
              subscribers: this.subscribers.size,
              ended: this.ended,
            }),
          );
          return;
      }
      const asset = STATIC[url.pathname];
      if (!asset) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('Not found\n');
        return;
      }
      const body = readFileSync(asset.file);
      res.writeHead(200, { 'content-type': asset.type, 'cache-control': 'no-cache' }).end(body);
    } catch (error) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(error as Error).message}\n`);
    }
  }

  /** Why a request with this Host header is refused (see the module comment); undefined: it is not. */
  private refusedHost(header: string | undefined): string | undefined {
    if (this.address === undefined || !isLoopback(this.address.host)) return undefined;
    // A browser always sends Host; a request without one (an HTTP/1.0 health check) is no rebinding.
    if (header === undefined || header === '') return undefined;
    const name = hostName(header);
    if (name === 'localhost' || name.endsWith('.localhost') || isLoopback(name.replace(/^\[|\]$/g, '')))
      return undefined;
    if (this.allowedHosts.has(name)) return undefined;
    return (
      `Host ${JSON.stringify(header)} refused: this server listens on ${this.address.host} and answers ` +
      `only requests for localhost or a loopback address (a guard against DNS rebinding). Reach it as ` +
      `http://localhost:${this.address.port}, or allow the name (rxrl run --metrics-allowed-host, rxrl ` +
      `dashboard --allowed-host, or allowedHosts in createMetricsServer's options).`
    );
  }

  private stream(req: IncomingMessage, res: ServerResponse, url: URL): void {
    const names = url.searchParams.getAll('name').filter((n) => n !== '');
    const run = url.searchParams.get('run') ?? undefined;
    const subscriber: Subscriber = {
      res,
      filter: { ...(names.length > 0 ? { name: names } : {}), ...(run ? { run } : {}) },
      completions: !['0', 'false', 'no'].includes(url.searchParams.get('completions') ?? ''),
    };
    const last = /^(\w+)-(\d+)$/.exec(
      String(req.headers['last-event-id'] ?? url.searchParams.get('after') ?? ''),
    );
    const otherStream = last !== null && last[1] !== this.epoch;
    const lastId = last && !otherStream ? Number(last[2]) : 0;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    res.socket?.setNoDelay(true);
    // The replay is taken and the subscriber added in one turn of the event loop: no event is missed or
    // sent twice. Live events wait in `held` while the replay goes out in chunks as the socket drains, so
    // a long run's history (tens of MB) reaches a new subscriber instead of overflowing its buffer.
    const replay = [
      ...[...this.valueHistory.values()].flatMap((ring) => ring.toArray()),
      ...this.latestTotals.values(),
      ...(subscriber.completions ? this.completionHistory.toArray() : []),
    ]
      .filter((e) => e.id > lastId && (!e.metric || metricMatches(e.metric, subscriber.filter)))
      .sort((a, b) => a.id - b.id);
    subscriber.held = [];
    this.subscribers.add(subscriber);
    const drop = () => this.subscribers.delete(subscriber);
    res.on('close', drop);
    res.on('error', drop);
    const drained = () =>
      new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    const ended = this.ended;
    let next = 0; // the next replay event to write
    const complete = (direct: boolean) => {
      res.write(this.frame(undefined, 'replayed', JSON.stringify({ events: replay.length, ended })));
      if (ended) res.write(this.frame(undefined, 'end', '{}'));
      const held = subscriber.held ?? [];
      delete subscriber.held;
      delete subscriber.finishReplay;
      for (const text of held) {
        if (direct) res.write(text);
        else this.write(subscriber, text);
      }
    };
    subscriber.finishReplay = () => {
      res.write(
        replay
          .slice(next)
          .map((e) => e.wire)
          .join(''),
      );
      next = replay.length;
      complete(true);
    };
    res.write('retry: 2000\n\n');
    if (otherStream) res.write(this.frame(undefined, 'reset', '{}'));
    // Still being replayed here: not gone, not dropped as too slow, not finished by close().
    const replaying = () => subscriber.finishReplay !== undefined && this.subscribers.has(subscriber);
    void (async () => {
      while (next < replay.length && replaying()) {
        let chunk = '';
        while (next < replay.length && chunk.length < REPLAY_CHUNK_CHARS) chunk += replay[next++]!.wire;
        if (!res.write(chunk)) await drained();
      }
      // Live events are held to the buffer limit again: they go once the replay has drained.
      if (res.writableNeedDrain && replaying()) await drained();
      if (replaying()) complete(false);
    })();
  }

  private frame(id: number | undefined, event: string, data: string): string {
    return `${id !== undefined ? `id: ${this.epoch}-${id}\n` : ''}event: ${event}\ndata: ${data}\n\n`;
  }
}

/** The host name of a Host header or name, as compared: lower case, no port, no trailing dot ('' if unparsable). */
function hostName(host: string): string {
  try {
    return new URL(`http://${host}`).hostname.replace(/\.$/, '');
  } catch {
    return '';
  }
}

/**
 * Whether an address (no brackets) is a loopback one: 127.0.0.0/8, ::1, or 127.x mapped into IPv6
 * (::ffff:127.0.0.1, which a URL writes ::ffff:7f00:1).
 */
function isLoopback(address: string): boolean {
  const mapped = /^::ffff:(?:(\d+\.\d+\.\d+\.\d+)|7f([0-9a-f]{2}):[0-9a-f]{1,4})$/i.exec(address);
  if (mapped) return mapped[1] === undefined || mapped[1].startsWith('127.');
  return isIP(address) === 4
    ? address.startsWith('127.')
    : isIP(address) === 6 && /^(0*:)*:?0*1$/.test(address);
}

/** A {@link MetricsServer} for these sources; call `listen()` to serve. */
export function createMetricsServer(
  metrics: Observable<Metric>,
  completions?: Observable<ScoredRollout>,
  options?: MetricsServerOptions,
): MetricsServer {
  return new MetricsServer(metrics, completions, options);
}
