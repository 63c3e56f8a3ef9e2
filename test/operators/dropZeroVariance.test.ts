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
