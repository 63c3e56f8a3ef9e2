import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { Group } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { dropZeroVariance } from '../../src/operators/dropZeroVariance.ts';
import { groupOf } from '../fixtures.ts';

const newScheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
const groups = {
  A: groupOf('A', [1, 0, 1]),
  B: groupOf('B', [1, 1, 1]),
  C: groupOf('C', [0.5, null, 0.25]),
  D: groupOf('D', [0, null, 0]),
};

describe('dropZeroVariance', () => {
  it('drops groups whose valid rewards all agree, counts them and reports each', () => {
    const dropped: Group[] = [];
    const metrics = new Metrics({ run: 't' });
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const source = cold('-A-B-C-D-|', groups);
      expectObservable(source.pipe(dropZeroVariance({ metrics, onDrop: (g) => dropped.push(g) }))).toBe(
        '-A---C---|',
        groups,
      );
      expectSubscriptions(source.subscriptions).toBe('^--------!');
    });
    expect(dropped.map((g) => g.groupId)).toEqual(['B', 'D']);
    expect(metrics.snapshot()).toMatchObject({
      'drops{reason=zero_variance}': 2,
      'drops.samples{reason=zero_variance}': 6,
    });
  });

  it('with normalize_then_sum keeps a group whose totals agree but whose named rewards vary', () => {
    // Totals 1 and 1, from accuracy 1 + format 0 and accuracy 0 + format 1: each reward has a spread.
    const group = groupOf('E', [1, 1]);
    group.samples[0] = { ...group.samples[0]!, rewards: { accuracy: 1, format: 0 } };
    group.samples[1] = { ...group.samples[1]!, rewards: { accuracy: 0, format: 1 } };
    const kept = (aggregation?: 'normalize_then_sum') => {
      const out: string[] = [];
      newScheduler().run(({ cold, flush }) => {
        cold('-E-|', { E: group })
          .pipe(dropZeroVariance(aggregation ? { aggregation } : {}))
          .subscribe((g) => out.push(g.groupId));
        flush();
      });
      return out;
    };
    expect(kept()).toEqual([]); // by totals: no spread
    expect(kept('normalize_then_sum')).toEqual(['E']);
  });

  it('passes errors through and stops on unsubscription', () => {
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const failing = cold('-A-#', groups, new Error('x'));
      expectObservable(failing.pipe(dropZeroVariance())).toBe('-A-#', groups, new Error('x'));
      const endless = cold('-A-B-C-', groups);
      expectObservable(endless.pipe(dropZeroVariance()), '^--!').toBe('-A-', groups);
      expectSubscriptions(endless.subscriptions).toBe('^--!');
    });
  });
});
