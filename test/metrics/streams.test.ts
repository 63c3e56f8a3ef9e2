import { appendFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lastValueFrom, Subject, take, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { Metric } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import {
  followMetricsJsonl,
  metricsOf,
  readMetricsJsonl,
  type InvalidMetricLine,
} from '../../src/metrics/streams.ts';
import { LatestTable, StepLines } from '../../src/metrics/table.ts';
import { logToJsonl, publishStep, tempDir } from './helpers.ts';

const metric = (name: string, value: number, step?: number, run = 'r'): Metric => ({
  schemaVersion: 1,
  run,
  time: 0,
  name,
  kind: 'value',
  value,
  ...(step !== undefined ? { step } : {}),
});

/** Resolves once `items` has `n` entries (or rejects after a while). */
async function until<T>(items: T[], n: number, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (items.length < n) {
    if (Date.now() - start > timeoutMs) throw new Error(`only ${items.length} of ${n} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('metricsOf', () => {
  it('keeps the metrics whose name starts with a prefix or matches a pattern, of one run', () => {
    const source = new Subject<Metric>();
    const byPrefix: string[] = [];
    const byPattern: string[] = [];
    metricsOf(source, { name: 'reward/', run: 'a' }).subscribe((m) => byPrefix.push(`${m.run}:${m.name}`));
    metricsOf(source, { name: [/kl$/, 'eval/pass@1'] }).subscribe((m) =>
      byPattern.push(`${m.run}:${m.name}`),
    );
    for (const m of [
      metric('reward/mean', 1, 0, 'a'),
      metric('reward/mean', 1, 0, 'b'),
      metric('train/kl', 1, 0, 'a'),
      metric('eval/pass@1', 1, 0, 'b'),
      metric('eval/pass@16', 1, 0, 'b'),
    ]) {
      source.next(m);
    }
    expect(byPrefix).toEqual(['a:reward/mean']);
    // 'eval/pass@1' is a prefix of 'eval/pass@16' too.
    expect(byPattern).toEqual(['a:train/kl', 'b:eval/pass@1', 'b:eval/pass@16']);
  });
});

describe('readMetricsJsonl', () => {
  it('gives the metrics a run logged, in order, and reports bad lines by number without stopping', async () => {
    const metrics = new Metrics({ run: 'r' });
    const path = join(tempDir(), 'metrics.jsonl');
    const seen: Metric[] = [];
    metrics.stream.subscribe((m) => seen.push(m));
    const log = logToJsonl(metrics, path);
    publishStep(metrics, 0);
    appendFileSync(path, '{"not": "a metric"}\n\nnot json\n');
    publishStep(metrics, 1);
    log.unsubscribe();

    const invalid: InvalidMetricLine[] = [];
    const read = await lastValueFrom(
      readMetricsJsonl(path, { onInvalid: (i) => invalid.push(i) }).pipe(toArray()),
    );
    expect(read).toEqual(seen);
    expect(invalid.map((i) => i.line)).toEqual([10, 12]);
    expect(invalid[0]!.reason).toMatch(/^Invalid Metric: /);
    expect(invalid[1]!.reason).toMatch(/^not valid JSON/);
    expect(invalid[0]!.path).toBe(path);
  });

  it('reads and reports nothing more once unsubscribed (take(1) of a file of many lines)', async () => {
    const path = join(tempDir(), 'metrics.jsonl');
    const lines = Array.from({ length: 2000 }, (_, i) =>
      i % 2 === 0 ? JSON.stringify(metric('reward/mean', i, i)) : 'not json',
    );
    writeFileSync(path, `${lines.join('\n')}\n`);
    let invalid = 0;
    const first = await lastValueFrom(
      readMetricsJsonl(path, { onInvalid: () => invalid++ }).pipe(take(1), toArray()),
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(first).toEqual([metric('reward/mean', 0, 0)]);
    expect(invalid).toBe(0);
  });

  it("reads an older run's completion_length/* under TRL's current completions/* names", async () => {
    const path = join(tempDir(), 'metrics.jsonl');
    const old = [metric('completion_length/mean', 12, 3), metric('completion_length/clipped_ratio', 0.5, 3)];
    writeFileSync(path, `${old.map((m) => JSON.stringify(m)).join('\n')}\n`);
    const read = await lastValueFrom(readMetricsJsonl(path).pipe(toArray()));
    expect(read).toEqual([
      metric('completions/mean_length', 12, 3),
      metric('completions/clipped_ratio', 0.5, 3),
    ]);
  });

  it('errors when the file cannot be read', async () => {
    await expect(lastValueFrom(readMetricsJsonl(join(tempDir(), 'missing.jsonl')))).rejects.toThrow(/ENOENT/);
  });
});

describe('followMetricsJsonl', () => {
  it('gives what is there, then lines as they are appended (waiting for partial ones), and starts over on truncation', async () => {
    const path = join(tempDir(), 'metrics.jsonl');
    const seen: Metric[] = [];
    const invalid: number[] = [];
    let restarts = 0;
    const subscription = followMetricsJsonl(path, {
      pollMs: 10,
      onInvalid: (i) => invalid.push(i.line),
      onRestart: () => restarts++,
    }).subscribe((m) => seen.push(m));
    // Waits for a file that is not there yet.
    await new Promise((resolve) => setTimeout(resolve, 50));
    writeFileSync(path, `${JSON.stringify(metric('a', 1, 0))}\n`);
    await until(seen, 1);
    const second = JSON.stringify(metric('a', 2, 1));
    appendFileSync(path, second.slice(0, 10));
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(seen).toHaveLength(1);
    appendFileSync(path, `${second.slice(10)}\nbroken\n${JSON.stringify(metric('b', 3, 1))}\n`);
    await until(seen, 3);
    expect(invalid).toEqual([3]);
    expect(restarts).toBe(0);
    // A new run in the same directory writes the file anew.
    writeFileSync(path, `${JSON.stringify(metric('c', 4, 0))}\n`);
    await until(seen, 4);
    subscription.unsubscribe();
    expect(seen.map((m) => `${m.name}=${m.value}`)).toEqual(['a=1', 'a=2', 'b=3', 'c=4']);
    expect(restarts).toBe(1);
  });

  it('starts over when another file takes its place, even one already longer than what was read', async () => {
    const dir = tempDir();
    const path = join(dir, 'metrics.jsonl');
    const seen: string[] = [];
    writeFileSync(path, `${JSON.stringify(metric('old', 1, 0))}\n`);
    const subscription = followMetricsJsonl(path, { pollMs: 10 }).subscribe((m) => seen.push(m.name));
    await until(seen, 1);
    // A new run moved the old directory aside and wrote a longer file at once (as r1zero does).
    const next = join(dir, 'next.jsonl');
    writeFileSync(next, [1, 2, 3].map((i) => JSON.stringify(metric(`new${i}`, i, 0))).join('\n') + '\n');
    renameSync(next, path);
    await until(seen, 4);
    subscription.unsubscribe();
    expect(seen).toEqual(['old', 'new1', 'new2', 'new3']);
  });
});

describe('terminal views', () => {
  it('LatestTable keeps the latest value of each series and renders them sorted', () => {
    const table = new LatestTable();
    const metrics = new Metrics({ run: 'r' });
    metrics.stream.subscribe((m) => table.update(m));
    publishStep(metrics, 0);
    publishStep(metrics, 1);
    const lines = table.render().split('\n');
    expect(lines[0]).toBe('r: 18 metrics, step 1');
    expect(lines[2]).toMatch(/^metric\s+kind\s+step\s+value$/);
    expect(lines.slice(3).map((l) => l.split(/\s+/)[0])).toEqual([
      'completions/mean_length',
      'drops.samples{reason=stale}',
      'groups.open',
      'reward/accuracy',
      'reward/mean',
      'rollout/tokens_per_second',
      'samples.generated',
      'staleness/mean',
      'train/kl',
    ]);
    expect(lines.find((l) => l.startsWith('reward/mean'))).toMatch(/^reward\/mean\s+value\s+1\s+0\.375$/);
    expect(lines.find((l) => l.startsWith('samples.generated'))).toMatch(/counter\s+1\s+32$/);
  });

  it('StepLines prints a step once the next one starts, and a late step on its own', () => {
    const lines = new StepLines();
    const out = [
      metric('x', 1, 0),
      metric('y', 2, 0),
      metric('x', 3, 1),
      metric('eval/pass@1', 0.5, 0),
      metric('x', 4, 2),
    ].flatMap((m) => lines.update(m));
    expect([...out, ...lines.flush()]).toEqual([
      'step 0  x 1  y 2',
      'step 0  eval/pass@1 0.5',
      'step 1  x 3',
      'step 2  x 4',
    ]);
  });

  it('a resumed run repeating the steps after its checkpoint starts the step lines and the table heading over', () => {
    const lines = new StepLines();
    const table = new LatestTable();
    const stream = [
      ...[1, 2, 3, 4].flatMap((step) => [
        metric('reward/mean', step, step),
        metric('train/loss', -step, step),
      ]),
      // Resumed from the checkpoint of step 2: steps 3 and 4 come (again).
      ...[3, 4].flatMap((step) => [
        metric('reward/mean', 10 * step, step),
        metric('train/loss', -10 * step, step),
      ]),
    ];
    const out = stream.flatMap((m) => {
      table.update(m);
      return lines.update(m);
    });
    expect([...out, ...lines.flush()]).toEqual([
      'step 1  reward/mean 1  train/loss -1',
      'step 2  reward/mean 2  train/loss -2',
      'step 3  reward/mean 3  train/loss -3',
      'step 4  reward/mean 4  train/loss -4',
      'step 3  reward/mean 30  train/loss -30',
      'step 4  reward/mean 40  train/loss -40',
    ]);
    expect(table.render().split('\n')[0]).toBe('r: 12 metrics, step 4');
    table.reset();
    expect(table.render()).toBe('(no metrics yet): 0 metrics');
  });
});
