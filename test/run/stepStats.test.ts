import { describe, expect, it } from 'vitest';
import type { Metric } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import arithmetic from '../../pipelines/r1-zero-arithmetic.ts';
import { advantageOptions, learnerConfig, RolloutWindow, recordStep } from '../../src/run/stepStats.ts';
import { defineTopology, type TopologyInput } from '../../src/topology/topology.ts';
import { scored } from '../fixtures.ts';

describe('RolloutWindow and recordStep', () => {
  it('publishes the per-step statistics users of TRL look for, computed over the window', () => {
    const window = new RolloutWindow();
    // Group a: rewards 1 and 0 (signal); group b: 1 and 1 (zero std). One clipped completion.
    const samples = [
      {
        ...scored('a', 0, 1, { completionLength: 2 }),
        rewards: { accuracy: 1, format: 1 },
        truncatedMass: 0.1,
      },
      { ...scored('a', 1, 0, { completionLength: 6 }), rewards: { accuracy: 0, format: null } },
      { ...scored('b', 0, 1, { completionLength: 4 }), rewards: { accuracy: 1, format: 0 } },
      {
        ...scored('b', 1, 1, { completionLength: 8 }),
        finishReason: 'length' as const,
        rewards: { accuracy: 1, format: 1 },
        truncatedMass: 0.05,
      },
    ];
    for (const s of samples) window.add(s);
    window.generated(20, 2);
    const stats = window.take();
    expect(stats.rewardMean).toBeCloseTo(0.75);
    // TRL's reward_std: group a's sample std (1 and 0: 0.707) and group b's (0), averaged.
    expect(stats.rewardStd).toBeCloseTo(Math.SQRT1_2 / 2, 12);
    expect(stats.rewardsByName).toEqual({ accuracy: 0.75, format: 2 / 3 }); // null format left out
    // TRL's rewards/<name>/std: the sample std over the step's samples (1, 0, 1, 1; format 1, 0, 1).
    expect(stats.rewardStdsByName.accuracy).toBeCloseTo(0.5, 12);
    expect(stats.rewardStdsByName.format).toBeCloseTo(Math.sqrt(1 / 3), 12);
    expect(stats.fracRewardZeroStd).toBe(0.5);
    // Over the samples where each was scored: accuracy 3 of 4, format 2 of the 3 scored.
    expect([stats.accuracy, stats.formatRate]).toEqual([0.75, 2 / 3]);
    expect([stats.lengthMin, stats.lengthMean, stats.lengthMax]).toEqual([2, 5, 8]);
    expect(stats.clippedRatio).toBe(0.25);
    // The three that ended by themselves (2, 6 and 4 tokens), not the one cut at the limit (8).
    expect(stats.terminatedLength).toEqual({ mean: 4, min: 2, max: 6 });
    // Per token, over the samples that measured it: (2 x 0.1 + 8 x 0.05) / 10.
    expect(stats.truncatedMass).toBeCloseTo(0.06, 12);
    expect(stats.tokensPerSecond).toBe(10);
    expect(stats.samplesPerSecond).toBe(2);

    const metrics = new Metrics({ run: 't' });
    const published: Metric[] = [];
    metrics.stream.subscribe((m) => published.push(m));
    recordStep(metrics, 3, stats, 0.5, []);
    const at3 = Object.fromEntries(
      published.filter((m) => m.kind === 'value' && m.step === 3).map((m) => [m.name, m.value]),
    );
    expect(at3).toMatchObject({
      'reward/mean': 0.75,
      'rewards/accuracy/mean': 0.75,
      'rewards/format/mean': 2 / 3,
      'rewards/accuracy/std': stats.rewardStdsByName.accuracy,
      frac_reward_zero_std: 0.5,
      'completions/mean_length': 5,
      'completions/max_length': 8,
      'completions/clipped_ratio': 0.25,
      'completions/mean_terminated_length': 4,
      'completions/max_terminated_length': 6,
      'rollout/samples_per_second': 2,
      'rollout/truncated_mass': stats.truncatedMass,
      'staleness/mean': 0.5,
    });
  });

  it('leaves a failed total (null) out of the reward mean and its group std', () => {
    const window = new RolloutWindow();
    for (const s of [scored('a', 0, 1), scored('a', 1, 0), scored('a', 2, null), scored('b', 0, 1)])
      window.add(s);
    const stats = window.take();
    expect(stats.rewardMean).toBeCloseTo(2 / 3, 12);
    expect(stats.rewardStd).toBeCloseTo(Math.SQRT1_2, 12); // group a only: b has one sample
    expect(stats.fracRewardZeroStd).toBe(0.5); // b: one valid total, no spread
    expect(stats.accuracy).toBeCloseTo(2 / 3, 12); // the failed accuracy left out, not a 0
  });

  it('starts a new window after take()', () => {
    const window = new RolloutWindow();
    window.add(scored('a', 0, 1, { completionLength: 9 }));
    window.take();
    window.add({ ...scored('c', 0, 0, { completionLength: 5 }), finishReason: 'length' as const });
    const stats = window.take();
    expect(stats.terminatedLength).toBeNull(); // the only one was cut; the 9 was the last window's
    expect(stats.rewardMean).toBe(0);
    expect(stats.rewardsByName).toEqual({ accuracy: 0 });
    expect(stats.rewardStdsByName).toEqual({}); // one sample: no std
    expect([stats.lengthMin, stats.lengthMax]).toEqual([5, 5]);
    expect(stats.fracRewardZeroStd).toBe(1); // one group, one sample: nothing to compare
    expect(stats.truncatedMass).toBeNull(); // no sample measured it
    const metrics = new Metrics({ run: 't' });
    const names: string[] = [];
    metrics.stream.subscribe((m) => names.push(m.name));
    recordStep(metrics, 1, stats, 0, []);
    expect(names).toContain('completions/clipped_ratio');
    expect(names.filter((n) => n.includes('terminated'))).toEqual([]); // no length to report, not a 0
  });
});

describe('what a topology asks of the learner and the advantages', () => {
  const { name: _, ...input } = arithmetic;
  const withGrpo = (grpo: Partial<TopologyInput['grpo']>) =>
    defineTopology({ ...input, name: 'variant', grpo: { ...arithmetic.grpo, ...grpo } });

  it("passes TRL's and verl's knobs through, with their defaults when left out", () => {
    const plain = learnerConfig(arithmetic);
    expect(plain.minibatches).toBe(1);
    expect(plain.maskTruncated).toBe(false);
    expect(plain.loss.dualClip).toBeUndefined();
    const set = learnerConfig(withGrpo({ minibatches: 4, maskTruncated: true, dualClip: 3, epochs: 2 }));
    expect([set.minibatches, set.maskTruncated, set.loss.dualClip, set.epochs]).toEqual([4, true, 3, 2]);
    expect(() => withGrpo({ dualClip: 1 })).toThrow(/dualClip/);
    expect(() => withGrpo({ groupSize: 1 })).toThrow(
      'a group needs at least 2 samples: GRPO compares each with the rest of its group',
    );
    expect(() => withGrpo({ minibatches: 3 })).toThrow(
      'grpo.minibatches (3) must divide the batch of groupSize x promptsPerStep = 128 samples',
    );
  });

  it("gives dr_grpo's normaliser the completion budget, not the width of a batch", () => {
    expect(learnerConfig(withGrpo({ lossAggregation: 'dr_grpo' })).loss.maxCompletionLength).toBe(
      arithmetic.sampling.maxNewTokens,
    );
  });

  it('scales advantages as asked, over the groups of one step', () => {
    expect(advantageOptions(arithmetic)).toEqual({
      estimator: 'grpo',
      groupsPerBatch: arithmetic.grpo.promptsPerStep,
    });
    expect(advantageOptions(withGrpo({ scaleRewards: 'batch' })).scale).toBe('batch');
  });
});
