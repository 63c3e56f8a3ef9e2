import { map, of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { groupAdvantages } from '../../src/grpo/advantages.ts';
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

  it('reinforce_pp_baseline agrees with the pure math, one group held or a step of them', () => {
    // Two groups of one step; held one at a time the batch std is the group's own (it once was 0, and the
    // advantages came out 10,000 times too large).
    const step = { A: groupOf('A', [0, 1, 0, 1]), B: groupOf('B', [1, 1, 1, 0]) };
    const rewards = [
      [0, 1, 0, 1],
      [1, 1, 1, 0],
    ];
    const run = (groupsPerBatch?: number) => {
      const out: number[] = [];
      of(step.A, step.B)
        .pipe(groupRelativeAdvantages({ estimator: 'reinforce_pp_baseline', groupsPerBatch }))
        .subscribe((s) => out.push(s.advantage));
      return out;
    };
    const pure = groupAdvantages(rewards, { estimator: 'reinforce_pp_baseline' }).flat();
    expect(run(2)).toEqual(pure);
    expect(run()).toEqual(
      rewards.flatMap((g) => groupAdvantages([g], { estimator: 'reinforce_pp_baseline' })[0]!),
    );
    // The step's std (8 rewards, five 1s: 0.5175) divides: the first group's 1s get (1 - 0.5) / (0.5175 + 1e-4).
    expect(run(2)[1]).toBeCloseTo(0.5 / (Math.sqrt((5 * 0.375 ** 2 + 3 * 0.625 ** 2) / 7) + 1e-4), 12);
  });

  it.each([null, Number.NaN])(
    'recomputing totals from the named rewards, a sample whose total failed (%s) gets 0 and stays out of the statistics',
    (failed) => {
      // Sample 1's format reward failed, so its total is no score; its accuracy is still there.
      const group = groupOf('F', [1, 0, 1]);
      group.samples[0] = { ...group.samples[0]!, rewards: { accuracy: 1, format: 1 }, reward: 1.5 };
      group.samples[1] = { ...group.samples[1]!, rewards: { accuracy: 1, format: null }, reward: failed };
      group.samples[2] = { ...group.samples[2]!, rewards: { accuracy: 0, format: 1 }, reward: 0.5 };
      const weights = { accuracy: 1, format: 0.5 };
      for (const aggregation of ['sum_then_normalize', 'normalize_then_sum'] as const) {
        const out: number[] = [];
        of(group)
          .pipe(groupRelativeAdvantages({ estimator: 'grpo', rewardWeights: weights, aggregation }))
          .subscribe((s) => out.push(s.advantage));
        // The same as the group of the two valid samples alone.
        const alone: number[] = [];
        of({ ...group, samples: [group.samples[0]!, group.samples[2]!] })
          .pipe(groupRelativeAdvantages({ estimator: 'grpo', rewardWeights: weights, aggregation }))
          .subscribe((s) => alone.push(s.advantage));
        expect(out[1], aggregation).toBe(0);
        expect([out[0], out[2]], aggregation).toEqual(alone);
        expect(out[0]).toBeGreaterThan(0);
      }
    },
  );

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
