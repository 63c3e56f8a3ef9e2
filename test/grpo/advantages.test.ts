import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  groupAdvantages,
  multiRewardAdvantages,
  weightedReward,
  type AdvantageEstimator,
} from '../../src/grpo/advantages.ts';

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const reward = fc.double({ min: -100, max: 100, noNaN: true });
const group = fc.array(reward, { minLength: 2, maxLength: 16 });
const centred: AdvantageEstimator[] = ['grpo', 'dr_grpo', 'rloo', 'reinforce_pp_baseline'];

describe('hand-checked values', () => {
  it('grpo: (r - mean) / (sample std + 1e-4)', () => {
    // rewards 1, 0, 0, 1: mean 0.5, sample std sqrt(1/3).
    const [a] = groupAdvantages([[1, 0, 0, 1]], { estimator: 'grpo' });
    const std = Math.sqrt(1 / 3);
    expect(a).toEqual([0.5, -0.5, -0.5, 0.5].map((x) => expect.closeTo(x / (std + 1e-4), 12)));
  });

  it('dr_grpo: r - mean, no std division', () => {
    expect(groupAdvantages([[2, 0, 1]], { estimator: 'dr_grpo' })[0]).toEqual([1, -1, 0]);
  });

  it('rloo: r minus the mean of the others', () => {
    const [a] = groupAdvantages([[3, 0, 0]], { estimator: 'rloo' });
    expect(a).toEqual([3, -1.5, -1.5].map((x) => expect.closeTo(x, 12)));
  });

  it('reinforce_pp_baseline: group mean, batch std', () => {
    const groups = [
      [1, 0],
      [10, 0],
    ];
    const all = [1, 0, 10, 0];
    const m = sum(all) / 4;
    const batchStd = Math.sqrt(sum(all.map((x) => (x - m) ** 2)) / 3);
    const a = groupAdvantages(groups, { estimator: 'reinforce_pp_baseline' });
    expect(a[0]![0]).toBeCloseTo(0.5 / (batchStd + 1e-4), 12);
    expect(a[1]![0]).toBeCloseTo(5 / (batchStd + 1e-4), 12);
  });

  it('scale overrides the estimator default', () => {
    const g = [[1, 0, 0, 1]];
    expect(groupAdvantages(g, { estimator: 'grpo', scale: 'none' })[0]).toEqual([0.5, -0.5, -0.5, 0.5]);
    const batch = groupAdvantages(
      [
        [1, 0],
        [3, 3],
      ],
      { estimator: 'grpo', scale: 'batch' },
    );
    const all = [1, 0, 3, 3];
    const m = sum(all) / 4;
    const sd = Math.sqrt(sum(all.map((x) => (x - m) ** 2)) / 3);
    expect(batch[0]![0]).toBeCloseTo(0.5 / (sd + 1e-4), 12);
  });

  it('null, NaN and infinite rewards are excluded from the statistics and get advantage 0', () => {
    const [a] = groupAdvantages([[1, null, 0, Number.NaN, Infinity, -Infinity]], { estimator: 'dr_grpo' });
    expect(a).toEqual([0.5, 0, -0.5, 0, 0, 0]); // an infinite one made the whole group NaN
  });

  it('a group of one (or one valid reward) has all advantages 0', () => {
    expect(groupAdvantages([[5]], { estimator: 'grpo' })).toEqual([[0]]);
    expect(groupAdvantages([[5, null]], { estimator: 'rloo' })).toEqual([[0, 0]]);
  });

  it('weighted sum of named rewards skips nulls; all null gives null', () => {
    expect(weightedReward({ accuracy: 1, format: 0.5 }, { format: 0.2 })).toBeCloseTo(1.1, 12);
    expect(weightedReward({ accuracy: null, format: 1 })).toBe(1);
    expect(weightedReward({ accuracy: null })).toBeNull();
    expect(weightedReward({ a: 1e308, b: 1e308 })).toBeNull(); // past the float range: no score
  });

  it('sum_then_normalize and normalize_then_sum differ when reward scales differ', () => {
    const g = [
      [
        { acc: 1, len: 10 },
        { acc: 0, len: 0 },
        { acc: 0, len: 20 },
      ],
    ];
    const s = multiRewardAdvantages(g, { estimator: 'grpo', aggregation: 'sum_then_normalize' })[0]!;
    const n = multiRewardAdvantages(g, { estimator: 'grpo', aggregation: 'normalize_then_sum' })[0]!;
    // normalize_then_sum is the sum of each reward's own grpo advantages.
    const acc = groupAdvantages([[1, 0, 0]], { estimator: 'grpo' })[0]!;
    const len = groupAdvantages([[10, 0, 20]], { estimator: 'grpo' })[0]!;
    n.forEach((v, i) => expect(v).toBeCloseTo(acc[i]! + len[i]!, 12));
    // sum_then_normalize lets the large-scale reward dominate: sample 2 (len 20) ranks first.
    expect(s[2]).toBeGreaterThan(s[0]!);
    expect(n[0]).toBeGreaterThan(n[2]!);
  });

  it('reward weights scale each reward in both aggregations', () => {
    const g = [
      [
        { a: 1, b: 0 },
        { a: 0, b: 1 },
      ],
    ];
    const nts = multiRewardAdvantages(g, {
      estimator: 'dr_grpo',
      aggregation: 'normalize_then_sum',
      rewardWeights: { a: 3 },
    });
    expect(nts[0]).toEqual([1, -1]); // 3 * (0.5, -0.5) + (-0.5, 0.5)
    const stn = multiRewardAdvantages(g, { estimator: 'dr_grpo', rewardWeights: { a: 3 } });
    expect(stn[0]).toEqual([1, -1]); // totals 3 and 1, mean 2
  });
});

describe('properties', () => {
  it('advantages of every centred estimator sum to ~0 in each group', () => {
    fc.assert(
      fc.property(
        fc.array(group, { minLength: 1, maxLength: 4 }),
        fc.constantFrom(...centred),
        (groups, estimator) => {
          for (const a of groupAdvantages(groups, { estimator })) {
            expect(Math.abs(sum(a))).toBeLessThan(1e-9 * (1 + sum(a.map(Math.abs))));
          }
        },
      ),
    );
  });

  it('are invariant to adding a constant to every reward', () => {
    fc.assert(
      fc.property(
        group,
        fc.double({ min: -50, max: 50, noNaN: true }),
        fc.constantFrom(...centred),
        (g, c, estimator) => {
          const a = groupAdvantages([g], { estimator })[0]!;
          const b = groupAdvantages([g.map((r) => r + c)], { estimator })[0]!;
          a.forEach((v, i) => expect(b[i]).toBeCloseTo(v, 6));
        },
      ),
    );
  });

  it('scale: grpo is (nearly) invariant to scaling rewards, dr_grpo and rloo scale linearly', () => {
    fc.assert(
      fc.property(group, fc.double({ min: 0.5, max: 20, noNaN: true }), (g, k) => {
        const scaled = g.map((r) => r * k);
        const [lin, linK] = [
          groupAdvantages([g], { estimator: 'dr_grpo' })[0]!,
          groupAdvantages([scaled], { estimator: 'dr_grpo' })[0]!,
        ];
        lin.forEach((v, i) => expect(linK[i]).toBeCloseTo(v * k, 6));
        const [rl, rlK] = [
          groupAdvantages([g], { estimator: 'rloo' })[0]!,
          groupAdvantages([scaled], { estimator: 'rloo' })[0]!,
        ];
        rl.forEach((v, i) => expect(rlK[i]).toBeCloseTo(v * k, 6));
        const std = Math.sqrt(sum(g.map((r) => (r - sum(g) / g.length) ** 2)) / (g.length - 1));
        fc.pre(std > 1); // where eps = 1e-4 moves the result by less than 1e-4 relative
        const [n, nK] = [
          groupAdvantages([g], { estimator: 'grpo' })[0]!,
          groupAdvantages([scaled], { estimator: 'grpo' })[0]!,
        ];
        n.forEach((v, i) => expect(nK[i]).toBeCloseTo(v, 3));
      }),
    );
  });

  it('grpo advantages have sample std ~1 when rewards vary', () => {
    fc.assert(
      fc.property(group, (g) => {
        const m = sum(g) / g.length;
        const std = Math.sqrt(sum(g.map((r) => (r - m) ** 2)) / (g.length - 1));
        fc.pre(std > 1e-1);
        const a = groupAdvantages([g], { estimator: 'grpo' })[0]!;
        const aStd = Math.sqrt(sum(a.map((x) => x * x)) / (a.length - 1));
        expect(aStd).toBeCloseTo(std / (std + 1e-4), 6);
      }),
    );
  });

  it('all-equal rewards give all-zero advantages', () => {
    fc.assert(
      fc.property(reward, fc.integer({ min: 1, max: 16 }), fc.constantFrom(...centred), (r, n, estimator) => {
        for (const a of groupAdvantages([Array(n).fill(r)], { estimator })[0]!) expect(a).toBe(0);
      }),
    );
  });

  it('NaN and null rewards never produce a non-finite advantage and get 0', () => {
    const maybeMissing = fc.oneof(reward, fc.constant(null), fc.constant(Number.NaN));
    fc.assert(
      fc.property(
        fc.array(fc.array(maybeMissing, { minLength: 1, maxLength: 10 }), { minLength: 1, maxLength: 4 }),
        fc.constantFrom(...centred),
        (groups, estimator) => {
          const out = groupAdvantages(groups, { estimator });
          out.forEach((a, g) =>
            a.forEach((v, i) => {
              expect(Number.isFinite(v)).toBe(true);
              const r = groups[g]![i];
              if (r === null || Number.isNaN(r)) expect(v).toBe(0);
            }),
          );
        },
      ),
    );
  });
});
