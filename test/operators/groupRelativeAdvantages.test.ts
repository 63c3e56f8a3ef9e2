import { map } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics/metrics.ts';
import { groupRelativeAdvantages } from '../../src/operators/groupRelativeAdvantages.ts';
import { groupOf } from '../fixtures.ts';

const newScheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
const groups = { A: groupOf('A', [1, 0]), B: groupOf('B', [2, 2]), C: groupOf('C', [1, null]) };

describe('groupRelativeAdvantages', () => {
  it('emits every sample of a group with its advantage, right after the group', () => {
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const source = cold('-A----B----C---|', groups);
      const out = source.pipe(
        groupRelativeAdvantages({ estimator: 'dr_grpo' }),
        map((s) => `${s.id}:${s.advantage}`),
      );
      expectObservable(out).toBe('-(ab)-(cd)-(ef)|', {
        a: 'A/0:0.5',
        b: 'A/1:-0.5',
        c: 'B/0:0',
        d: 'B/1:0',
        e: 'C/0:0',
        f: 'C/1:0',
      });
      expectSubscriptions(source.subscriptions).toBe('^--------------!');
    });
  });

  it('with batch scaling holds groupsPerBatch groups and divides by their common std', () => {
    newScheduler().run(({ cold, expectObservable }) => {
      const source = cold('-A--B-------C-|', groups);
      const out = source.pipe(
        groupRelativeAdvantages({ estimator: 'dr_grpo', scale: 'batch', groupsPerBatch: 2, epsilon: 0 }),
        map((s) => Number(s.advantage.toFixed(4))),
      );
      // batch std of 1, 0, 2, 2 is 0.9574; C is released alone at completion (std of [1] is 0: A = 0).
      expectObservable(out).toBe('----(abcd)----(ef|)', { a: 0.5222, b: -0.5222, c: 0, d: 0, e: 0, f: 0 });
    });
  });

  it('passes errors through and unsubscribes', () => {
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const source = cold('-A---#', groups, new Error('upstream'));
      const out = source.pipe(
        groupRelativeAdvantages({ estimator: 'grpo' }),
        map((s) => s.id),
      );
      expectObservable(out).toBe('-(ab)#', { a: 'A/0', b: 'A/1' }, new Error('upstream'));
      expectSubscriptions(source.subscriptions).toBe('^----!');
      const source2 = cold('-A---B-', groups);
      expectObservable(
        source2.pipe(
          groupRelativeAdvantages({ estimator: 'grpo' }),
          map((s) => s.id),
        ),
        '^--!',
      ).toBe('-(ab)', { a: 'A/0', b: 'A/1' });
      expectSubscriptions(source2.subscriptions).toBe('^--!');
    });
  });

  it('counts groups, samples, null rewards and zero-std groups', () => {
    const metrics = new Metrics({ run: 't' });
    newScheduler().run(({ cold, expectObservable }) => {
      const out = cold('A---B---C---|', groups).pipe(
        groupRelativeAdvantages({ estimator: 'grpo', metrics }),
        map(() => 'x'),
      );
      expectObservable(out).toBe('(xx)(xx)(xx)|');
    });
    expect(metrics.snapshot()).toMatchObject({
      'advantage.groups': 3,
      'advantage.samples': 6,
      'advantage.null_rewards': 1,
      'advantage.zero_std_groups': 2,
    });
  });
});
