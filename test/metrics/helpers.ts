import { appendFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import type { Subscription } from 'rxjs';
import type { Metrics } from '../../src/metrics/metrics.ts';

export function tempDir(prefix = 'rxrl-metrics-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Writes every metric of the stream to `path`, one JSON per line: what runR1Zero does with metrics.jsonl. */
export function logToJsonl(metrics: Metrics, path: string): Subscription {
  writeFileSync(path, '');
  return metrics.stream.subscribe((m) => appendFileSync(path, `${JSON.stringify(m)}\n`));
}

/** What a run publishes at a step: per-step values, then the counters and gauges (flush). */
export function publishStep(metrics: Metrics, step: number): void {
  metrics.record('reward/mean', 0.25 * step + 0.125, step);
  metrics.record('reward/accuracy', Math.min(1, 0.2 * step), step);
  metrics.record('completions/mean_length', 40 - step, step);
  metrics.record('train/kl', 0.001 * step * step, step);
  metrics.record('staleness/mean', step % 2 === 0 ? 0.5 : 1, step);
  metrics.record('rollout/tokens_per_second', 1000 + 10 * step, step);
  metrics.counter('samples.generated').inc(16);
  metrics.counter('drops.samples', { reason: 'stale' }).inc(step % 2);
  metrics.gauge('groups.open').set(step + 3);
  metrics.flush(step);
}

export interface SseClient {
  events: EventSourceMessage[];
  /** Resolves once an event passes `predicate` (the events so far), or rejects after `timeoutMs`. */
  waitFor(predicate: (events: EventSourceMessage[]) => boolean, timeoutMs?: number): Promise<void>;
  close(): void;
  /** Resolves when the server has closed the stream. */
  ended: Promise<void>;
}

/** A Server-Sent Events client over real HTTP (fetch, reading the body as it comes). */
export async function sse(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
  const abort = new AbortController();
  const events: EventSourceMessage[] = [];
  const waiters = new Set<() => void>();
  const parser = createParser({
    onEvent: (event) => {
      events.push(event);
      for (const w of waiters) w();
    },
  });
  const response = await fetch(url, { signal: abort.signal, headers });
  if (!response.ok || !response.body) throw new Error(`${url}: ${response.status}`);
  const body = response.body;
  const ended = (async () => {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of body) parser.feed(decoder.decode(chunk as Uint8Array, { stream: true }));
    } catch (error) {
      if (!abort.signal.aborted) throw error;
    }
  })();
  return {
    events,
    ended,
    close: () => abort.abort(),
    waitFor: (predicate, timeoutMs = 10_000) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (!predicate(events)) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out; events so far: ${events.map((e) => e.event).join(',')}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
  };
}
