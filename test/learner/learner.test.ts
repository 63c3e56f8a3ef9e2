import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchSample, GradientBatch, Metric } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { DEFAULT_GRPO_LOSS } from '../../src/grpo/loss.ts';
import {
  Learner,
  recordStepReport,
  versionReport,
  type LearnerConfig,
  type StepReport,
} from '../../src/learner/learner.ts';
import { learningRateAt } from '../../src/learner/schedule.ts';
import { makeGradientBatch } from '../../src/operators/toGradientBatches.ts';
import { loadCheckpoint, saveCheckpoint } from '../../src/policy/checkpoint.ts';
import { GPT } from '../../src/policy/gpt.ts';
import { CharTokenizer } from '../../src/policy/tokenizer.ts';
import { TINY, useWasm } from '../policy/helpers.ts';

const config: LearnerConfig = { loss: DEFAULT_GRPO_LOSS, learningRate: { peak: 1e-2 } };

/** Samples whose behaviour log-probs are the model's own: an on-policy batch. */
function onPolicyBatch(
  model: GPT,
  rows: { prompt: number[]; completion: number[]; advantage: number; finish?: 'eos' | 'length' }[],
): GradientBatch {
  const samples: BatchSample[] = rows.map((r, i) => {
    const ids = tf.tensor2d([[...r.prompt, ...r.completion]], undefined, 'int32');
    const mask = tf.tensor2d([[...r.prompt.map(() => 0), ...r.completion.map(() => 1)]]);
    const lp = (model.sequenceLogProbs(ids, mask).arraySync() as number[][])[0]!;
    tf.dispose([ids, mask]);
    return {
      rolloutId: `g/${i}`,
      groupId: 'g',
      promptTokenIds: r.prompt,
      completionTokenIds: r.completion,
      behaviourLogProbs: lp.slice(r.prompt.length - 1),
      advantage: r.advantage,
      policyVersion: 0,
      finishReason: r.finish ?? 'eos',
    };
  });
  return makeGradientBatch(samples);
}

const sumCompletion = (learner: Learner, batch: GradientBatch) =>
  learner.logProbs(batch.samples).map((row) => row.reduce((a, b) => a + b, 0));

const rows = [
  { prompt: [3, 4, 5], completion: [6, 7, 1], advantage: 1 },
  { prompt: [3, 4, 5], completion: [8, 9, 1], advantage: -1 },
  { prompt: [10, 11], completion: [12, 13, 14, 1], advantage: 1 },
  { prompt: [10, 11], completion: [15, 1], advantage: -1 },
];

beforeAll(useWasm);

describe('Learner', () => {
  it('one step raises the probability of positively-advantaged completions and lowers the others', () => {
    const model = new GPT({ ...TINY, seed: 3 });
    const learner = new Learner(model, config);
    const batch = onPolicyBatch(model, rows);
    const before = sumCompletion(learner, batch);
    const [report] = learner.train(batch);
    const after = sumCompletion(learner, batch);
    rows.forEach((r, i) => {
      if (r.advantage > 0) expect(after[i]!, `row ${i}`).toBeGreaterThan(before[i]!);
      else expect(after[i]!, `row ${i}`).toBeLessThan(before[i]!);
    });
    expect(report!.version).toBe(1);
    expect(report!.ratioMean).toBeCloseTo(1, 4); // on-policy: behaviour = current
    expect(report!.gradNorm).toBeGreaterThan(0);
    expect(report!.entropy).toBeGreaterThan(0);
    // beta 0: no reference is kept, so no KL is reported (TRL logs none), rather than a KL of 0.
    expect(report!.kl).toBeUndefined();
    expect(report!.klLoss).toBeUndefined();
    const metrics = new Metrics({ run: 't' });
    const seen: string[] = [];
    metrics.stream.subscribe((m) => seen.push(m.name));
    recordStepReport(metrics, versionReport([report!]));
    expect(seen).toContain('train/loss');
    expect(seen.filter((name) => name.startsWith('train/kl'))).toEqual([]);
    learner.dispose();
    model.dispose();
  });

  it("reports a version's clip shares as TRL does: means, the lowest low and the highest high", () => {
    const step = (version: number, low: number, high: number): StepReport => ({
      version,
      optimiserStep: version,
      loss: 0,
      pgLoss: 0,
      clipRatioLow: low,
      clipRatioHigh: high,
      clipRatioRegion: low + high,
      clipRatioLowMin: low,
      clipRatioHighMax: high,
      ratioMean: 1,
      entropy: 1,
      gradNorm: 1,
      learningRate: 1e-3,
      tokens: 10,
      seconds: 1,
    });
    const report = versionReport([step(1, 0.1, 0.3), step(1, 0.05, 0.1), step(1, 0.3, 0.2)]);
    expect(report.clipRatioLow).toBeCloseTo(0.15, 12);
    expect(report.clipRatioHigh).toBeCloseTo(0.2, 12);
    expect([report.clipRatioLowMin, report.clipRatioHighMax]).toEqual([0.05, 0.3]);
    const metrics = new Metrics({ run: 't' });
    const values = new Map<string, number>();
    metrics.stream.subscribe((m) => {
      if (m.kind === 'value') values.set(m.name, m.value);
    });
    recordStepReport(metrics, report);
    expect(values.get('train/clip_ratio/low_min')).toBe(0.05);
    expect(values.get('train/clip_ratio/high_max')).toBe(0.3);
    expect(values.get('train/clip_ratio/low_mean')).toBeCloseTo(0.15, 12);
  });

  it('takes epochs x minibatches optimiser steps per batch, which make one policy version', () => {
    const model = new GPT({ ...TINY, seed: 4 });
    const metrics = new Metrics({ run: 't' });
    const published: Metric[] = [];
    metrics.stream.subscribe((m) => published.push(m));
    const learner = new Learner(model, { ...config, epochs: 2, minibatches: 2 }, { metrics });
    const reports = learner.train(onPolicyBatch(model, rows));
    // One value of each train/* metric per version: the steps' mean (the last learning rate).
    const at = (name: string) => published.filter((m) => m.name === name && m.step === 1).map((m) => m.value);
    expect(at('train/loss')).toEqual([reports.reduce((sum, r) => sum + r.loss, 0) / 4]);
    expect(at('train/grad_norm')).toEqual([reports.reduce((sum, r) => sum + r.gradNorm, 0) / 4]);
    expect(at('train/learning_rate')).toEqual([reports[3]!.learningRate]);
    expect(reports.map((r) => [r.version, r.optimiserStep])).toEqual([
      [1, 1],
      [1, 2],
      [1, 3],
      [1, 4],
    ]);
    expect(learner.version).toBe(1);
    expect(learner.train(onPolicyBatch(model, rows)).map((r) => [r.version, r.optimiserStep])).toEqual([
      [2, 5],
      [2, 6],
      [2, 7],
      [2, 8],
    ]);
    // the second pass is off-policy: ratios move away from 1
    expect(Math.abs(reports[3]!.ratioMean - 1)).toBeGreaterThan(1e-4);
    learner.dispose();
    model.dispose();
  });

  it('KL to the frozen reference starts at 0, grows with training, and resets when the reference is refreshed', () => {
    const model = new GPT({ ...TINY, seed: 5 });
    const learner = new Learner(model, {
      ...config,
      loss: { ...config.loss, beta: 0.1 },
      referenceRefreshEvery: 4,
    });
    const kls = [1, 2, 3, 4, 5].map(() => learner.train(onPolicyBatch(model, rows))[0]!.kl);
    expect(kls[0]).toBeCloseTo(0, 6);
    expect(kls[3]!).toBeGreaterThan(kls[1]!);
    expect(kls[4]!).toBeCloseTo(0, 6); // refreshed after step 4
    learner.dispose();
    model.dispose();
  });

  it('with maskTruncated, truncated completions carry no loss', () => {
    const model = new GPT({ ...TINY, seed: 6 });
    const learner = new Learner(model, { ...config, maskTruncated: true });
    const [r] = learner.train(
      onPolicyBatch(
        model,
        rows.map((row) => ({ ...row, finish: 'length' as const })),
      ),
    );
    expect(r!.gradNorm).toBe(0);
    expect(r!.loss).toBe(0);
    learner.dispose();
    model.dispose();
  });

  it("with maskTruncated, a truncated token far below exp's range (log-prob -100) gives no NaN", () => {
    const model = new GPT({ ...TINY, seed: 6 });
    const learner = new Learner(model, { ...config, maskTruncated: true });
    const batch = onPolicyBatch(model, [
      ...rows.slice(0, 2),
      { ...rows[2]!, finish: 'length' as const },
      rows[3]!,
    ]);
    const samples = batch.samples.map((s, i) =>
      i === 2 ? { ...s, behaviourLogProbs: s.behaviourLogProbs.map(() => -100) } : s,
    );
    const [r] = learner.train({ ...batch, samples });
    expect(Number.isFinite(r!.loss)).toBe(true);
    expect(Number.isFinite(r!.gradNorm)).toBe(true);
    learner.dispose();
    model.dispose();
  });

  it('cuts a short batch into even minibatches: 5 samples in 4 make 4 optimiser steps', () => {
    const model = new GPT({ ...TINY, seed: 8 });
    const learner = new Learner(model, { ...config, minibatches: 4 });
    // 5 samples in 4 minibatches: 2, 1, 1, 1 (a ceil-sized cut made 2, 2, 1: three steps).
    const five = onPolicyBatch(model, [...rows, rows[0]!]);
    expect(learner.train(five).map((r) => r.tokens)).toHaveLength(4);
    learner.dispose();
    model.dispose();
  });

  it('reports the dual clip share when a dual clip is set, and no such metric without one', () => {
    const model = new GPT({ ...TINY, seed: 5 });
    const published = (dualClip?: number) => {
      const metrics = new Metrics({ run: 't' });
      const names: string[] = [];
      metrics.stream.subscribe((m) => names.push(m.name));
      const learner = new Learner(
        model,
        { ...config, loss: { ...config.loss, ...(dualClip ? { dualClip } : {}) } },
        { metrics },
      );
      const [r] = learner.train(onPolicyBatch(model, rows));
      learner.dispose();
      return { names, dual: r!.clipRatioDual };
    };
    const withDual = published(3);
    expect(withDual.dual).toBe(0); // on-policy: every ratio is 1, nothing past c
    expect(withDual.names).toContain('train/clip_ratio/dual_mean');
    const without = published();
    expect(without.dual).toBeUndefined();
    expect(without.names.filter((n) => n.includes('dual'))).toEqual([]);
    model.dispose();
  });

  it('clips the global gradient norm', async () => {
    // After one step Adam's first moment is (1 - beta1) x the gradient it was given: its global norm is
    // 0.1 x the clipped norm (maxGradNorm), or 0.1 x the reported norm with clipping off (0).
    const firstMomentNorm = async (maxGradNorm: number) => {
      const model = new GPT({ ...TINY, seed: 3 });
      const learner = new Learner(model, { ...config, maxGradNorm, learningRate: { peak: 0 } });
      const [r] = learner.train(onPolicyBatch(model, rows));
      let sumSquares = 0;
      await learner.optimizer.withState(async (state) => {
        for (const [name, t] of state)
          if (name.startsWith('adam.m/')) sumSquares += tf.tidy(() => t.square().sum()).dataSync()[0]!;
      });
      learner.dispose();
      model.dispose();
      return { gradNorm: r!.gradNorm, moment: Math.sqrt(sumSquares) };
    };
    const clipped = await firstMomentNorm(1e-3);
    expect(clipped.gradNorm).toBeGreaterThan(1e-2); // reported before clipping
    expect(clipped.moment).toBeCloseTo(0.1 * 1e-3, 7);
    const unclipped = await firstMomentNorm(0);
    expect(unclipped.gradNorm).toBeCloseTo(clipped.gradNorm, 5);
    expect(unclipped.moment / (0.1 * unclipped.gradNorm)).toBeCloseTo(1, 4);
  });

  it('a batch whose second minibatch is malformed throws, naming the rollout, and frees the first', () => {
    const model = new GPT({ ...TINY, seed: 9 });
    const learner = new Learner(model, { ...config, minibatches: 2 });
    const batch = onPolicyBatch(model, rows);
    const last = batch.samples.length - 1;
    const bad = {
      ...batch,
      samples: batch.samples.map((s, i) =>
        i === last ? { ...s, behaviourLogProbs: s.behaviourLogProbs.slice(1) } : s,
      ),
    };
    const before = tf.memory().numTensors;
    expect(() => learner.train(bad)).toThrow(`rollout ${batch.samples[last]!.rolloutId} has`);
    expect(tf.memory().numTensors).toBe(before);
    expect(learner.version).toBe(0);
    // A sample without a prompt (none scores its first token) is refused by name too.
    const empty = {
      ...batch,
      samples: [{ ...batch.samples[0]!, promptTokenIds: [] }, ...batch.samples.slice(1)],
    };
    expect(() => learner.train(empty)).toThrow(`rollout ${batch.samples[0]!.rolloutId} has an empty prompt`);
    expect(tf.memory().numTensors).toBe(before);
    learner.dispose();
    model.dispose();
  });

  it('leaks no tensors across many steps', () => {
    const model = new GPT({ ...TINY, seed: 7 });
    const learner = new Learner(model, {
      ...config,
      loss: { ...config.loss, beta: 0.05 },
      epochs: 2,
      minibatches: 2,
    });
    const batch = onPolicyBatch(model, rows);
    learner.train(batch);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 5; i++) learner.train(batch);
    expect(tf.memory().numTensors).toBe(before);
    learner.dispose();
    model.dispose();
  });

  describe('checkpoint round trip', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rxrl-learner-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('restores weights, optimiser state and the KL reference: training on continues exactly as without the restart', async () => {
      // A KL term against a reference that is never refreshed: the resumed learner must measure it
      // against the first weights still, not against the ones it resumed from.
      const klConfig: LearnerConfig = { ...config, loss: { ...config.loss, beta: 0.1 } };
      const model = new GPT({ ...TINY, seed: 8 });
      const learner = new Learner(model, klConfig);
      const batch = onPolicyBatch(model, rows);
      learner.train(batch);
      learner.train(batch);
      await learner.withState((state) =>
        saveCheckpoint(join(dir, 'ckpt'), {
          model,
          tokenizer: new CharTokenizer('abcdefghij'),
          policyVersion: learner.version,
          optimizer: state,
        }),
      );

      const restored = await loadCheckpoint(join(dir, 'ckpt'));
      expect(restored.policyVersion).toBe(2);
      expect([...restored.optimizer.keys()].filter((k) => k.startsWith('reference/'))).toHaveLength(
        model.params.size,
      );
      const resumed = new Learner(restored.model, klConfig, { initialVersion: restored.policyVersion });
      resumed.loadState(restored.optimizer);
      tf.dispose([...restored.optimizer.values()]);
      expect(resumed.logProbs(batch.samples)).toEqual(learner.logProbs(batch.samples));

      const [next] = learner.train(batch);
      const [resumedNext] = resumed.train(batch);
      expect(next!.kl).toBeGreaterThan(1e-6);
      expect(resumedNext!.kl).toBeCloseTo(next!.kl!, 7);
      expect(resumedNext!.learningRate).toBe(next!.learningRate);
      const a = learner.logProbs(batch.samples).flat();
      const b = resumed.logProbs(batch.samples).flat();
      a.forEach((x, i) => expect(b[i]).toBeCloseTo(x, 5));
      expect(resumed.version).toBe(3);
      for (const l of [learner, resumed]) l.dispose();
      for (const m of [model, restored.model]) m.dispose();
    });
  });
});

describe('learning-rate schedule', () => {
  it('warms up linearly, then decays to the minimum', () => {
    const s = { peak: 1, warmupSteps: 4, decay: 'cosine' as const, totalSteps: 14, min: 0.1 };
    expect([0, 1, 3].map((t) => learningRateAt(s, t))).toEqual([0.25, 0.5, 1]);
    expect(learningRateAt(s, 4)).toBeCloseTo(1, 12);
    expect(learningRateAt(s, 9)).toBeCloseTo(0.55, 12);
    expect(learningRateAt(s, 14)).toBeCloseTo(0.1, 12);
    expect(learningRateAt({ ...s, decay: 'linear' }, 9)).toBeCloseTo(0.55, 12);
    expect(learningRateAt({ peak: 2 }, 100)).toBe(2);
  });
});

describe('tensor ownership', () => {
  it('a model and its optimiser hold exactly their variables, and dispose frees them all', async () => {
    const { AdamW } = await import('../../src/learner/adamw.ts');
    const before = tf.memory().numTensors;
    const model = new GPT({ ...TINY, seed: 3 });
    const optimizer = new AdamW(model.params);
    // Each parameter, and its two Adam moments: no initial value left behind.
    expect(tf.memory().numTensors - before).toBe(3 * model.variables().length);
    optimizer.dispose();
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
