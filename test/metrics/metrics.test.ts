import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics/metrics.ts';
import { validateMessage } from '../../src/validation.ts';
import type { Metric } from '../../schemas/index.ts';

describe('Metrics', () => {
  it('publishes counters, gauges and recorded values as valid Metric messages with the clock of its scheduler', () => {
    const scheduler = new TestScheduler(() => undefined);
    const metrics = new Metrics({ run: 'run-1', scheduler });
    const seen: Metric[] = [];
    metrics.stream.subscribe((m) => seen.push(m));
    metrics.counter('drops', { reason: 'stale' }).inc(3);
    metrics.gauge('groups.open').set(7);
    metrics.record('reward/mean', 0.25, 4);
    metrics.flush(4);
    expect(seen).toEqual([
      { schemaVersion: 1, run: 'run-1', time: 0, name: 'reward/mean', kind: 'value', value: 0.25, step: 4 },
      {
        schemaVersion: 1,
        run: 'run-1',
        time: 0,
        name: 'drops',
        kind: 'counter',
        value: 3,
        step: 4,
        labels: { reason: 'stale' },
      },
      { schemaVersion: 1, run: 'run-1', time: 0, name: 'groups.open', kind: 'gauge', value: 7, step: 4 },
    ]);
    for (const m of seen) expect(validateMessage('Metric', m).ok).toBe(true);
  });

  it('filters by name prefix, and never publishes a non-finite value', () => {
    const metrics = new Metrics({ run: 'r' });
    const rewards: string[] = [];
    metrics.select('reward/').subscribe((m) => rewards.push(`${m.name}=${m.value}`));
    metrics.record('reward/mean', 1);
    metrics.record('kl', 0.1);
    metrics.record('reward/std', Number.NaN);
    expect(rewards).toEqual(['reward/mean=1']);
  });

  it('returns the same counter for the same name and labels; snapshot keys include labels', () => {
    const metrics = new Metrics({ run: 'r' });
    metrics.counter('drops', { reason: 'stale' }).inc();
    metrics.counter('drops', { reason: 'stale' }).inc();
    metrics.counter('drops', { reason: 'zero_variance' }).inc();
    expect(metrics.snapshot()).toEqual({ 'drops{reason=stale}': 2, 'drops{reason=zero_variance}': 1 });
  });
});
