import { createServer as createHttpServer, get as httpGet } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { lastValueFrom, Subject, toArray } from 'rxjs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Metric, ScoredRollout } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { PrometheusExporter, sanitizeMetricName } from '../../src/metrics/prometheus.ts';
import { createMetricsServer, type MetricsServer } from '../../src/metrics/server.ts';
import { metricsFromServer } from '../../src/metrics/sources.ts';
import { metricsOf, readMetricsJsonl } from '../../src/metrics/streams.ts';
import { scored } from '../fixtures.ts';
import { logToJsonl, publishStep, sse, tempDir } from './helpers.ts';

const servers: MetricsServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(metrics: Metrics, completions?: Subject<ScoredRollout>) {
  const server = createMetricsServer(metrics.stream, completions);
  servers.push(server);
  return { server, ...(await server.listen(0)) };
}

const metricEvents = (events: { event?: string; data: string }[]) =>
  events.filter((e) => e.event === 'metric').map((e) => JSON.parse(e.data) as Metric);

describe('metrics server: /metrics/stream', () => {
  it('sends what the Observable and the JSONL log get, live and replayed to a late subscriber', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const jsonl = join(tempDir(), 'metrics.jsonl');
    const log = logToJsonl(metrics, jsonl);
    const seen: Metric[] = [];
    metrics.stream.subscribe((m) => seen.push(m));
    const { url } = await serve(metrics);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

    const early = await sse(`${url}/metrics/stream`);
    await early.waitFor((events) => events.some((e) => e.event === 'replayed'));
    publishStep(metrics, 0);
    publishStep(metrics, 1);
    const late = await sse(`${url}/metrics/stream`);
    await late.waitFor((events) => events.some((e) => e.event === 'replayed'));
    publishStep(metrics, 2);
    publishStep(metrics, 3);
    log.unsubscribe();
    const fromFile = await lastValueFrom(readMetricsJsonl(jsonl).pipe(toArray()));
    expect(fromFile).toHaveLength(4 * 9);
    await early.waitFor((events) => metricEvents(events).length >= fromFile.length);
    await late.waitFor(
      (events) => metricEvents(events).at(-1)?.step === 3 && events.at(-1)?.event === 'metric',
    );
    early.close();
    late.close();

    expect(fromFile).toEqual(seen);
    expect(metricEvents(early.events)).toEqual(seen);
    // The late one: every per-step value of steps 0 and 1 but only the latest counters and gauges (step 1's),
    // in the order they were published; then the live ones.
    const replayedAt = late.events.findIndex((e) => e.event === 'replayed');
    expect(metricEvents(late.events.slice(0, replayedAt))).toEqual(
      seen.slice(0, 18).filter((m) => m.kind === 'value' || m.step === 1),
    );
    expect(metricEvents(late.events.slice(replayedAt))).toEqual(seen.slice(18));
    // Ids are <this server's epoch>-<n>, n ascending.
    const tagged = late.events.filter((e) => e.event === 'metric').map((e) => e.id!.split('-'));
    expect(new Set(tagged.map(([epoch]) => epoch)).size).toBe(1);
    const ids = tagged.map(([, n]) => Number(n));
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('filters by name prefix and run like metricsOf, and resumes after Last-Event-ID', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const seen: Metric[] = [];
    metricsOf(metrics.stream, { name: ['reward/', 'train/kl'], run: 'run-a' }).subscribe((m) => seen.push(m));
    const { url } = await serve(metrics);
    publishStep(metrics, 0);
    publishStep(metrics, 1);

    const filtered = await sse(`${url}/metrics/stream?name=reward/&name=train/kl&run=run-a`);
    const otherRun = await sse(`${url}/metrics/stream?run=run-b`);
    await filtered.waitFor((events) => events.some((e) => e.event === 'replayed'));
    await otherRun.waitFor((events) => events.some((e) => e.event === 'replayed'));
    expect(metricEvents(filtered.events)).toEqual(seen);
    expect(seen.map((m) => m.name)).toEqual([
      'reward/mean',
      'reward/accuracy',
      'train/kl',
      'reward/mean',
      'reward/accuracy',
      'train/kl',
    ]);
    expect(metricEvents(otherRun.events)).toEqual([]);
    filtered.close();
    otherRun.close();

    // A reconnecting client gets only what came after the last event it had.
    const lastId = filtered.events.filter((e) => e.event === 'metric').at(-1)!.id!;
    publishStep(metrics, 2);
    const resumed = await sse(`${url}/metrics/stream?name=reward/&name=train/kl`, {
      'last-event-id': lastId,
    });
    await resumed.waitFor((events) => events.some((e) => e.event === 'replayed'));
    resumed.close();
    expect(metricEvents(resumed.events)).toEqual(seen.slice(6));
    expect(metricEvents(resumed.events).map((m) => m.step)).toEqual([2, 2, 2]);
    expect(resumed.events.some((e) => e.event === 'reset')).toBe(false);

    // The same id sent to another server (a run restarted on this port) means nothing there: reset, all.
    const restarted = new Metrics({ run: 'run-a' });
    const second = await serve(restarted);
    publishStep(restarted, 0);
    const elsewhere = await sse(`${second.url}/metrics/stream?name=reward/&name=train/kl`, {
      'last-event-id': lastId,
    });
    await elsewhere.waitFor((events) => events.some((e) => e.event === 'replayed'));
    elsewhere.close();
    expect(elsewhere.events[0]!.event).toBe('reset');
    expect(metricEvents(elsewhere.events).map((m) => m.step)).toEqual([0, 0, 0]);
  });

  it('a replay far over the send buffer limit reaches a slow new subscriber whole, with the live events after it', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const server = createMetricsServer(metrics.stream, undefined, { maxBufferedBytes: 64 * 1024 });
    servers.push(server);
    const { url } = await server.listen(0);
    // About 25 MB of replay: more than the kernel's socket buffers take, so most of it waits in the server's.
    const steps = 10_000;
    const names = Array.from({ length: 20 }, (_, i) => `train/series_${i}`);
    for (let step = 0; step < steps; step++)
      for (const name of names) metrics.record(name, step / steps, step);
    // A client that reads nothing for a while.
    const text = await new Promise<string>((resolve, reject) => {
      const req = httpGet(`${url}/metrics/stream`, (res) => {
        res.pause();
        setTimeout(() => {
          metrics.record('train/series_0', 1, steps); // live, while the replay is still going out
          const chunks: string[] = [];
          let tail = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            chunks.push(chunk);
            const seam = tail + chunk;
            tail = seam.slice(-32);
            if (seam.includes(`"step":${steps}}`)) {
              req.destroy();
              resolve(chunks.join(''));
            }
          });
          res.on('close', () => resolve(chunks.join('')));
          res.resume();
        }, 300);
      });
      req.on('error', reject);
    });
    const events = text.split('\n\n').map((frame) => /^event: (\w+)$/m.exec(frame)?.[1]);
    expect(events.filter((e) => e === 'metric')).toHaveLength(names.length * steps + 1);
    expect(events.filter((e) => e !== undefined).slice(-2)).toEqual(['replayed', 'metric']);
  });

  it('a client that stops reading mid-replay: closing the server still sends it everything and `end`; live events past the limit drop it', async () => {
    const history = async () => {
      const metrics = new Metrics({ run: 'run-a' });
      const server = createMetricsServer(metrics.stream, undefined, { maxBufferedBytes: 64 * 1024 });
      servers.push(server);
      const { url } = await server.listen(0);
      for (let step = 0; step < 10_000; step++)
        for (let i = 0; i < 20; i++) metrics.record(`train/series_${i}`, step, step);
      return { metrics, server, url };
    };
    /** A subscriber that reads nothing until `resume` is called; then everything until the server closes. */
    const stalled = (url: string) =>
      new Promise<{ resume: () => Promise<string> }>((resolve, reject) => {
        httpGet(`${url}/metrics/stream`, (res) => {
          res.pause();
          resolve({
            resume: () =>
              new Promise<string>((done) => {
                const chunks: string[] = [];
                res.setEncoding('utf8');
                res.on('data', (chunk: string) => chunks.push(chunk));
                res.on('close', () => done(chunks.join('')));
                res.resume();
              }),
          });
        }).on('error', reject);
      });
    const events = (text: string) => text.split('\n\n').map((frame) => /^event: (\w+)$/m.exec(frame)?.[1]);

    const first = await history();
    const client = await stalled(first.url);
    const closed = first.server.close();
    const received = events(await client.resume());
    await closed;
    expect(received.filter((e) => e === 'metric')).toHaveLength(200_000);
    expect(received.filter((e) => e !== undefined && e !== 'metric')).toEqual(['replayed', 'end']);

    const second = await history();
    const slow = await stalled(second.url);
    await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < 1000; i++) second.metrics.record('reward/mean', i, 10_000 + i); // ~100 KB held
    const health = await (await fetch(`${second.url}/healthz`)).json();
    expect(health).toMatchObject({ subscribers: 0 });
    const cut = events(await slow.resume());
    expect(cut).not.toContain('replayed');
  });

  it('reset() (a followed file started over): subscribers get reset, late ones and /metrics only what came after', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const { server, url } = await serve(metrics);
    publishStep(metrics, 0);
    const early = await sse(`${url}/metrics/stream`);
    await early.waitFor((events) => events.some((e) => e.event === 'replayed'));
    server.reset();
    metrics.record('reward/mean', 0.125, 0);
    await early.waitFor(
      (events) => events.at(-1)?.event === 'metric' && events.some((e) => e.event === 'reset'),
    );
    const late = await sse(`${url}/metrics/stream`);
    await late.waitFor((events) => events.some((e) => e.event === 'replayed'));
    early.close();
    late.close();
    expect(metricEvents(late.events).map((m) => [m.name, m.value])).toEqual([['reward/mean', 0.125]]);
    // A dashboard that was away during the reset comes back with an id from before it: reset, all again.
    const before = early.events.find((e) => e.event === 'metric')!.id!;
    const back = await sse(`${url}/metrics/stream`, { 'last-event-id': before });
    await back.waitFor((events) => events.some((e) => e.event === 'replayed'));
    back.close();
    expect(back.events[0]!.event).toBe('reset');
    expect(metricEvents(back.events).map((m) => m.value)).toEqual([0.125]);
    const families = parsePrometheusTextFormat(await (await fetch(`${url}/metrics`)).text());
    expect(families.map((f) => f.name)).toEqual(['rxrl_reward_mean']);
  });

  it('keeps the whole curve of each per-step series for late subscribers, and only the latest counter values', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const server = createMetricsServer(metrics.stream, undefined, { history: 3 });
    servers.push(server);
    const { url } = await server.listen(0);
    for (let step = 0; step < 5; step++) publishStep(metrics, step);
    const replay = await lastValueFrom(metricsFromServer(url).pipe(toArray()));
    const byName = (name: string) => replay.filter((m) => m.name === name).map((m) => [m.step, m.value]);
    expect(byName('reward/mean')).toEqual([
      [2, 0.625],
      [3, 0.875],
      [4, 1.125],
    ]);
    expect(byName('samples.generated')).toEqual([[4, 80]]);
    expect(byName('drops.samples')).toEqual([[4, 2]]);
  });

  it('metricsFromServer, following, reconnects after a lost connection and gets only what it missed', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const { port } = await serve(metrics);
    // A TCP proxy in front of the server, whose connections the test cuts (a network cut: no `end` event).
    const sockets = new Set<Socket>();
    const proxy = createNetServer((client) => {
      const upstream = connect(port, '127.0.0.1');
      client.pipe(upstream).pipe(client);
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on('error', () => undefined);
        socket.on('close', () => [client, upstream].forEach((s) => s.destroy()));
      }
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    try {
      const through = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
      const steps: number[] = [];
      const reconnects: string[] = [];
      const until = (n: number) => vi.waitFor(() => expect(steps.length).toBe(n), { timeout: 10_000 });
      const subscription = metricsFromServer(through, {
        follow: true,
        filter: { name: 'reward/mean' },
        reconnectMs: 50,
        onReconnect: (reason) => reconnects.push(reason),
      }).subscribe((m) => steps.push(m.step!));
      publishStep(metrics, 1);
      await until(1);
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      publishStep(metrics, 2);
      publishStep(metrics, 3);
      await until(3);
      publishStep(metrics, 4);
      await until(4);
      subscription.unsubscribe();
      // Each once, in order: the server replayed only the events after the last id the client had.
      expect(steps).toEqual([1, 2, 3, 4]);
      expect(reconnects.length).toBeGreaterThanOrEqual(1);
      expect(reconnects[0]).toMatch(/^lost http:\/\/127\.0\.0\.1:\d+: /);
    } finally {
      proxy.close();
    }
    // Before any connection was made, a failure is an error at once.
    await expect(
      lastValueFrom(metricsFromServer('http://127.0.0.1:1', { follow: true, reconnectMs: 50 })),
    ).rejects.toThrow(/Reading metrics from http:\/\/127\.0\.0\.1:1: fetch failed/);
  });

  it('metricsFromServer gives up after its attempts, and does not retry what another try would not change', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const server = createMetricsServer(metrics.stream);
    servers.push(server);
    const { url } = await server.listen(0);
    publishStep(metrics, 1);
    const reconnects: number[] = [];
    const got: Metric[] = [];
    const lost = new Promise<unknown>((resolve) =>
      metricsFromServer(url, {
        follow: true,
        reconnectMs: 20,
        reconnectAttempts: 2,
        onReconnect: (_, attempt) => reconnects.push(attempt),
      }).subscribe({ next: (m) => got.push(m), error: resolve, complete: () => resolve('completed') }),
    );
    await vi.waitFor(() => expect(got.length).toBeGreaterThan(0));
    // The server goes away without its `end` (a crash): connections cut, nothing listening.
    const http = (server as unknown as { server: { closeAllConnections(): void; close(): void } }).server;
    http.close();
    http.closeAllConnections();
    expect(String(await lost)).toMatch(/gave up after 2 attempts to reconnect/);
    expect(reconnects).toEqual([1, 2]);
    // A page that is not the event stream (a login proxy's), even while following: an error at once.
    const page = createHttpServer((_, res) =>
      res.writeHead(200, { 'content-type': 'text/html' }).end('<html>'),
    );
    await new Promise<void>((resolve) => page.listen(0, '127.0.0.1', resolve));
    try {
      const at = `http://127.0.0.1:${(page.address() as AddressInfo).port}`;
      await expect(lastValueFrom(metricsFromServer(at, { follow: true, reconnectMs: 20 }))).rejects.toThrow(
        /answered 200 OK \(text\/html, not an event stream\)/,
      );
    } finally {
      page.close();
    }
  });

  it('sends recent completions as `completion` events with step, prompt, completion and rewards', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const completions = new Subject<ScoredRollout>();
    const { url } = await serve(metrics, completions);
    const sample = { ...scored('g1', 0, 1, { version: 7 }), rewards: { accuracy: 1, format: 0 } };
    completions.next(sample);
    const client = await sse(`${url}/metrics/stream`);
    completions.next({ ...sample, id: 'g1/1', index: 1, completion: 'live one', reward: null });
    await client.waitFor((events) => events.filter((e) => e.event === 'completion').length === 2);
    const [replayed, live] = client.events
      .filter((e) => e.event === 'completion')
      .map((e) => JSON.parse(e.data));
    expect(replayed).toMatchObject({
      step: 7,
      prompt: 'question g1',
      completion: 'xxx',
      rewards: { accuracy: 1, format: 0 },
      reward: 1,
      tokens: 3,
    });
    expect(live).toMatchObject({ step: 7, completion: 'live one', reward: null });
    const without = await sse(`${url}/metrics/stream?completions=0`);
    await without.waitFor((events) => events.some((e) => e.event === 'replayed'));
    expect(without.events.filter((e) => e.event === 'completion')).toEqual([]);
    client.close();
    without.close();
  });

  it('tells subscribers the stream ended when it closes, and then stops listening', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const { server, url } = await serve(metrics);
    const client = await sse(`${url}/metrics/stream`);
    await client.waitFor((events) => events.some((e) => e.event === 'replayed'));
    await server.close();
    await client.ended;
    expect(client.events.at(-1)?.event).toBe('end');
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
  });
});

describe('metrics server: other endpoints', () => {
  it('GET /metrics is Prometheus text that a strict parser reads: sanitised names, latest values, labels', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const { server, url } = await serve(metrics);
    publishStep(metrics, 0);
    publishStep(metrics, 1);
    metrics.record('eval/pass@1', 0.75, 1);
    // A series that first comes without labels and then with some: one family with both.
    metrics.record('kafka.lag', 5, 1);
    metrics.record('kafka.lag', 7, 1, { topic: 'run-a.rollouts' });

    const response = await fetch(`${url}/metrics`);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    const families = parsePrometheusTextFormat(text);
    const family = (name: string) => families.find((f) => f.name === name);

    expect(family('rxrl_reward_mean')).toEqual({
      name: 'rxrl_reward_mean',
      help: 'rxrl latest per-step value: reward/mean',
      type: 'GAUGE',
      metrics: [{ labels: { run: 'run-a' }, value: '0.375' }],
    });
    expect(family('rxrl_eval_pass_1')?.metrics).toEqual([{ labels: { run: 'run-a' }, value: '0.75' }]);
    expect(family('rxrl_samples_generated_total')).toMatchObject({
      type: 'COUNTER',
      metrics: [{ labels: { run: 'run-a' }, value: '32' }],
    });
    expect(family('rxrl_drops_samples_total')).toMatchObject({
      type: 'COUNTER',
      metrics: [{ labels: { run: 'run-a', reason: 'stale' }, value: '1' }],
    });
    expect(family('rxrl_groups_open')).toMatchObject({ type: 'GAUGE', metrics: [{ value: '4' }] });
    expect(family('rxrl_kafka_lag')?.metrics).toEqual([
      { labels: { run: 'run-a' }, value: '5' },
      { labels: { run: 'run-a', topic: 'run-a.rollouts' }, value: '7' },
    ]);
    for (const f of families) expect(f.name).toMatch(/^rxrl_[a-zA-Z0-9_]+$/);

    // The text and prom-client's own view of its registry agree.
    const json = await server.exporter.registry.getMetricsAsJSON();
    expect(families.map((f) => f.name).sort()).toEqual(json.map((m) => m.name).sort());
    for (const m of json) {
      const parsed = family(m.name)!;
      expect(parsed.type.toLowerCase()).toBe(m.type);
      expect(parsed.metrics.map((s) => Number(s.value))).toEqual(m.values.map((v) => v.value));
    }
  });

  it('two metrics whose names map to one Prometheus name: the first keeps it, the second is refused with a warning', async () => {
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      const exporter = new PrometheusExporter();
      const at = (name: string, value: number): Metric => ({
        schemaVersion: 1,
        run: 'r',
        name,
        kind: 'value',
        value,
        time: 0,
        step: 1,
      });
      exporter.update(at('rewards/my-reward.v2/mean', 0.25));
      exporter.update(at('rewards/my_reward_v2/mean', 0.75));
      exporter.update(at('rewards/my_reward_v2/mean', 0.5));
      const families = parsePrometheusTextFormat(await exporter.metrics());
      expect(families).toEqual([
        {
          name: 'rxrl_rewards_my_reward_v2_mean',
          help: 'rxrl latest per-step value: rewards/my-reward.v2/mean',
          type: 'GAUGE',
          metrics: [{ labels: { run: 'r' }, value: '0.25' }],
        },
      ]);
      expect(warn.mock.calls).toEqual([
        [
          'metrics: value rewards/my_reward_v2/mean is not exported: rxrl_rewards_my_reward_v2_mean is already gauge rewards/my-reward.v2/mean',
        ],
      ]);
    } finally {
      warn.mockRestore();
    }
  });

  it('names follow the Prometheus rules', () => {
    expect(sanitizeMetricName('reward/mean')).toBe('reward_mean');
    expect(sanitizeMetricName('train/clip_ratio/low_mean')).toBe('train_clip_ratio_low_mean');
    expect(sanitizeMetricName('eval/pass@1')).toBe('eval_pass_1');
    expect(sanitizeMetricName('4xx')).toBe('_4xx');
  });

  it('serves /healthz, the dashboard and its chart library from node_modules, and 404s the rest', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    const { url } = await serve(metrics);
    publishStep(metrics, 0);
    expect(await (await fetch(`${url}/healthz`)).json()).toMatchObject({ status: 'ok', metrics: 9 });
    const page = await fetch(`${url}/`);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    const html = await page.text();
    for (const asset of [
      'vendor/uPlot.iife.min.js',
      'vendor/uPlot.min.css',
      'dashboard.js',
      'dashboard.css',
    ]) {
      expect(html).toContain(asset);
      const response = await fetch(`${url}/${asset}`);
      expect(response.status).toBe(200);
      expect((await response.text()).length).toBeGreaterThan(100);
    }
    expect((await fetch(`${url}/nothing`)).status).toBe(404);
    expect((await fetch(`${url}/metrics`, { method: 'POST' })).status).toBe(405);
  });

  it('on a loopback address, answers only requests for this machine or an allowed name (DNS rebinding)', async () => {
    const metrics = new Metrics({ run: 'run-a' });
    publishStep(metrics, 0);
    const server = createMetricsServer(metrics.stream, undefined, { allowedHosts: ['Trainer.LAN'] });
    servers.push(server);
    const { port } = await server.listen(0, '127.0.0.1');
    const status = (host: string, at = port) =>
      new Promise<{ code: number; body: string }>((resolve, reject) => {
        httpGet({ host: '127.0.0.1', port: at, path: '/metrics', headers: { host } }, (res) => {
          let body = '';
          res.on('data', (chunk: Buffer) => (body += chunk.toString()));
          res.on('end', () => resolve({ code: res.statusCode!, body }));
        }).on('error', reject);
      });
    for (const host of [
      `localhost:${port}`,
      `127.0.0.1:${port}`,
      'LOCALHOST.',
      'app.localhost',
      `[::1]:${port}`,
      '[::ffff:127.0.0.1]',
      'trainer.lan:1',
      'trainer.lan.',
    ])
      expect((await status(host)).code, host).toBe(200);
    const refused = await status(`attacker.example:${port}`);
    expect(refused.code).toBe(403);
    expect(refused.body).toMatch(/Host "attacker\.example:\d+" refused: .*localhost.*DNS rebinding/);
    expect((await status('127.0.0.1.attacker.example')).code).toBe(403);
    expect((await status('[::ffff:10.0.0.1]')).code).toBe(403);
    // No Host at all (an HTTP/1.0 health check): no browser sends that, so it is no rebinding.
    const bare = await new Promise<string>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.end('GET /healthz HTTP/1.0\r\n\r\n'));
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
    });
    expect(bare).toMatch(/^HTTP\/1\.1 200/);
    // Listening on every address, it is meant to be reached by names it cannot know.
    const open = createMetricsServer(metrics.stream);
    servers.push(open);
    const wide = await open.listen(0, '0.0.0.0');
    expect((await status('trainer-7.cluster.local', wide.port)).code).toBe(200);
  });
});
