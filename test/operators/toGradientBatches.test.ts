import { map } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { GradientBatch } from '../../schemas/index.ts';
import { parseMessage } from '../../src/validation.ts';
import { toGradientBatches } from '../../src/operators/toGradientBatches.ts';
import { advantaged } from '../fixtures.ts';
import { Metrics } from '../../src/metrics/metrics.ts';

const newScheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
const ids = map((b: { samples: { rolloutId: string }[] }) => b.samples.map((s) => s.rolloutId).join(','));
const samples = {
  a: advantaged('A', 0, 1, { completionLength: 3 }),
  b: advantaged('A', 1, -1, { completionLength: 5 }),
  c: advantaged('B', 0, 1, { completionLength: 8 }),
  d: advantaged('B', 1, -1, { completionLength: 2 }),
  e: advantaged('C', 0, 1, { completionLength: 30 }),
};

describe('toGradientBatches', () => {
  it('by sample count, with the last partial batch at completion', () => {
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const source = cold('-a-b-c-d-e-|', samples);
      expectObservable(source.pipe(toGradientBatches({ limit: { samples: 2 } }), ids)).toBe(
        '---x---y---(z|)',
        {
          x: 'A/0,A/1',
          y: 'B/0,B/1',
          z: 'C/0',
        },
      );
      expectSubscriptions(source.subscriptions).toBe('^----------!');
    });
  });

  it('by token budget (prompt + completion); an oversized sample goes alone', () => {
    const metrics = new Metrics({ run: 't' });
    newScheduler().run(({ cold, expectObservable }) => {
      // token costs (prompt 2 +): a 5, b 7, c 10, d 4, e 32; budget 12
      // a + b = 12 fills a batch; c + d would exceed it; d + e too, and e alone exceeds the budget.
      const source = cold('-a-b-c-d-e-----|', samples);
      expectObservable(source.pipe(toGradientBatches({ limit: { tokens: 12 }, metrics }), ids)).toBe(
        '---x---y-(zw)--|',
        { x: 'A/0,A/1', y: 'B/0', z: 'B/1', w: 'C/0' },
      );
    });
    expect(metrics.snapshot()['batches.oversized']).toBe(1);
  });

  it('fills in the batch fields and produces a valid GradientBatch with a deterministic id', () => {
    /** The batches of up to 4 samples that the samples of `marbles` make. */
    const batchesOf = (marbles: string) => {
      const batches: GradientBatch[] = [];
      newScheduler().run(({ cold, flush }) => {
        cold(marbles, samples)
          .pipe(toGradientBatches({ limit: { samples: 4 } }))
          .subscribe((b) => batches.push(b));
        flush();
      });
      return batches;
    };
    const batch = parseMessage('GradientBatch', batchesOf('abcd|')[0]);
    expect(batch.completionTokens).toBe(3 + 5 + 8 + 2);
    expect(batch.maxCompletionLength).toBe(8);
    expect(batch.samples.map((s) => s.advantage)).toEqual([1, -1, 1, -1]);
    expect(batchesOf('abcd|')[0]!.id).toBe(batch.id);
    // Another set of samples, another id.
    expect(batchesOf('abc|')[0]!.id).not.toBe(batch.id);
  });

  it('can drop the partial batch instead (counted), passes errors, unsubscribes', () => {
    const metrics = new Metrics({ run: 't' });
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      expectObservable(
        cold('-a-b-c-|', samples).pipe(
          toGradientBatches({ limit: { samples: 2 }, emitPartial: false, metrics }),
          ids,
        ),
      ).toBe('---x---|', { x: 'A/0,A/1' });
      expectObservable(cold('-a-#', samples).pipe(toGradientBatches({ limit: { samples: 2 } }), ids)).toBe(
        '---#',
      );
      const endless = cold('-a-b-c-', samples);
      expectObservable(endless.pipe(toGradientBatches({ limit: { samples: 2 } }), ids), '^-!').toBe('---');
      expectSubscriptions(endless.subscriptions).toBe('^-!');
    });
    expect(metrics.snapshot()['drops.samples{reason=partial_batch}']).toBe(1);
  });

  it('rejects a limit that is not a positive integer', () => {
    expect(() => toGradientBatches({ limit: { samples: 0 } })).toThrow(/positive integer.*"samples":0/);
  });
});
