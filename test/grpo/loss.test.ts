import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_GRPO_LOSS, grpoLoss, grpoLossValues, type GrpoLossConfig } from '../../src/grpo/loss.ts';

// An independent float64 reference, written plainly from the published formulas (not the tfjs code path).
interface Case {
  logp: number[][];
  old: number[][];
  ref: number[][];
  adv: number[];
  mask: number[][];
}

function reference(c: Case, cfg: GrpoLossConfig) {
  const B = c.logp.length;
  const T = c.logp[0]!.length;
  const per: number[][] = [];
  const klTok: number[][] = [];
  let low = 0;
  let high = 0;
  let dual = 0;
  let ratioSum = 0;
  let active = 0;
  for (let i = 0; i < B; i++) {
    const a = c.adv[i]!;
    let seqLog = 0;
    let len = 0;
    for (let t = 0; t < T; t++) {
      seqLog += c.mask[i]![t]! * (c.logp[i]![t]! - c.old[i]![t]!);
      len += c.mask[i]![t]!;
    }
    const seqRatio = Math.exp(seqLog / Math.max(len, 1));
    per.push([]);
    klTok.push([]);
    for (let t = 0; t < T; t++) {
      const m = c.mask[i]![t]!;
      const rho = cfg.importanceSampling === 'token' ? Math.exp(c.logp[i]![t]! - c.old[i]![t]!) : seqRatio;
      const clipped = Math.min(Math.max(rho, 1 - cfg.epsLow), 1 + cfg.epsHigh);
      let l = -Math.min(rho * a, clipped * a);
      if (cfg.dualClip !== undefined && a < 0) {
        if (l > -cfg.dualClip * a) dual += m;
        l = Math.min(l, -cfg.dualClip * a);
      }
      const d = c.ref[i]![t]! - c.logp[i]![t]!;
      const kl = cfg.klEstimator === 'k1' ? -d : cfg.klEstimator === 'k2' ? (d * d) / 2 : Math.exp(d) - d - 1;
      per[i]!.push(l);
      klTok[i]!.push(kl);
      if (rho < 1 - cfg.epsLow && a < 0) low += m;
      if (rho > 1 + cfg.epsHigh && a > 0) high += m;
      ratioSum += rho * m;
      active += m;
    }
  }
  const agg = (x: number[][]) => {
    let total = 0;
    let seqMeans = 0;
    for (let i = 0; i < B; i++) {
      let s = 0;
      let n = 0;
      for (let t = 0; t < T; t++) {
        s += x[i]![t]! * c.mask[i]![t]!;
        n += c.mask[i]![t]!;
      }
      total += s;
      seqMeans += s / Math.max(n, 1);
    }
    switch (cfg.lossAggregation) {
      case 'grpo':
        return seqMeans / B;
      case 'bnpo':
        return total / Math.max(active, 1);
      case 'dr_grpo':
        return total / (B * (cfg.maxCompletionLength ?? T));
      case 'dapo':
        return total / (cfg.activeTokens ?? Math.max(active, 1));
    }
  };
  const pgLoss = agg(per);
  const klLoss = cfg.beta * agg(klTok);
  let klMean = 0;
  for (let i = 0; i < B; i++) for (let t = 0; t < T; t++) klMean += klTok[i]![t]! * c.mask[i]![t]!;
  return {
    loss: pgLoss + klLoss,
    pgLoss,
    klLoss,
    kl: klMean / active,
    clipRatioLow: low / active,
    clipRatioHigh: high / active,
    dualClipRatio: dual / active,
    ratioMean: ratioSum / active,
  };
}

// A seeded case with ratios spread well outside [0.8, 1.2] so clipping is exercised on both sides.
function makeCase(seed: number, B = 4, T = 6): Case {
  let s = seed;
  const rnd = () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  const logp = Array.from({ length: B }, () => Array.from({ length: T }, () => -0.2 - 2 * rnd()));
  const old = logp.map((row) => row.map((v) => v + (rnd() - 0.5) * 0.9));
  const ref = logp.map((row) => row.map((v) => v + (rnd() - 0.5) * 0.6));
  const adv = Array.from({ length: B }, (_, i) => (i % 2 === 0 ? 1 : -1) * (0.3 + rnd()));
  const mask = Array.from({ length: B }, (_, i) => Array.from({ length: T }, (_, t) => (t < T - i ? 1 : 0)));
  return { logp, old, ref, adv, mask };
}

function inputs(c: Case, logp?: tf.Tensor2D) {
  return {
    logProbs: logp ?? tf.tensor2d(c.logp),
    oldLogProbs: tf.tensor2d(c.old),
    refLogProbs: tf.tensor2d(c.ref),
    advantages: tf.tensor1d(c.adv),
    mask: tf.tensor2d(c.mask),
  };
}

const variants: [string, Partial<GrpoLossConfig>][] = [
  ['grpo aggregation, token level', {}],
  ['bnpo', { lossAggregation: 'bnpo' }],
  ['dr_grpo with max length', { lossAggregation: 'dr_grpo', maxCompletionLength: 10 }],
  ['dapo with global active tokens', { lossAggregation: 'dapo', activeTokens: 40 }],
  ['sequence level (GSPO)', { importanceSampling: 'sequence' }],
  ['asymmetric clip (DAPO clip-higher)', { epsLow: 0.2, epsHigh: 0.28 }],
  ['dual clip', { dualClip: 1.5 }],
  ['KL k1', { beta: 0.1, klEstimator: 'k1' }],
  ['KL k2', { beta: 0.1, klEstimator: 'k2' }],
  ['KL k3', { beta: 0.1, klEstimator: 'k3' }],
];

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('grpoLoss values against a float64 reference', () => {
  for (const [name, override] of variants) {
    it(name, () => {
      const cfg = { ...DEFAULT_GRPO_LOSS, ...override };
      for (const seed of [1, 2, 3]) {
        const c = makeCase(seed);
        const want = reference(c, cfg);
        const got = grpoLossValues(inputs(c), cfg);
        for (const key of Object.keys(want) as (keyof typeof want)[]) {
          expect(got[key], `${key} (seed ${seed})`).toBeCloseTo(want[key], 5);
        }
      }
    });
  }

  it('exercises clipping on both sides and the dual clip in these cases', () => {
    const r = reference(makeCase(1), { ...DEFAULT_GRPO_LOSS, dualClip: 1.5 });
    expect(r.clipRatioLow).toBeGreaterThan(0);
    expect(r.clipRatioHigh).toBeGreaterThan(0);
    expect(r.dualClipRatio).toBeGreaterThan(0);
  });
});

describe('grpoLoss gradients against finite differences', () => {
  for (const [name, override] of variants) {
    it(name, () => {
      const cfg = { ...DEFAULT_GRPO_LOSS, ...override };
      const c = makeCase(7);
      const lossOf = (logp: number[][]) => reference({ ...c, logp }, cfg).loss;
      const grad = tf.grad((x: tf.Tensor) => grpoLoss(inputs(c, x as tf.Tensor2D), cfg).loss)(
        tf.tensor2d(c.logp),
      );
      const g = grad.arraySync() as number[][];
      const h = 1e-6;
      for (let i = 0; i < c.logp.length; i++) {
        for (let t = 0; t < c.logp[0]!.length; t++) {
          const plus = c.logp.map((row) => [...row]);
          const minus = c.logp.map((row) => [...row]);
          plus[i]![t]! += h;
          minus[i]![t]! -= h;
          const fd = (lossOf(plus) - lossOf(minus)) / (2 * h);
          expect(g[i]![t]!, `d loss / d logp[${i}][${t}]`).toBeCloseTo(fd, 4);
        }
      }
    });
  }
});

describe('each switch changes the result the way the published formulas say', () => {
  const base = DEFAULT_GRPO_LOSS;
  const c = makeCase(3);

  it('with logp = old (one pass per batch) the surrogate is -mean(A) and the ratio is 1', () => {
    const same = { ...c, old: c.logp };
    const v = grpoLossValues(inputs(same), base);
    expect(v.ratioMean).toBeCloseTo(1, 6);
    expect(v.pgLoss).toBeCloseTo(-c.adv.reduce((a, b) => a + b) / c.adv.length, 5);
    expect(v.clipRatioRegion).toBe(0);
  });

  it('masked tokens do not affect the loss or its gradient', () => {
    const changed = { ...c, logp: c.logp.map((row, i) => row.map((v, t) => (c.mask[i]![t] ? v : v - 5))) };
    expect(grpoLossValues(inputs(changed), base).loss).toBeCloseTo(grpoLossValues(inputs(c), base).loss, 6);
    const g = tf.grad((x: tf.Tensor) => grpoLoss(inputs(c, x as tf.Tensor2D), base).loss)(
      tf.tensor2d(c.logp),
    );
    const rows = g.arraySync() as number[][];
    rows.forEach((row, i) => row.forEach((v, t) => c.mask[i]![t] === 0 && expect(Math.abs(v)).toBe(0)));
  });

  it('a wider clip range clips fewer tokens; clip-higher only changes the upper side', () => {
    const tight = grpoLossValues(inputs(c), { ...base, epsLow: 0.1, epsHigh: 0.1 });
    const wide = grpoLossValues(inputs(c), { ...base, epsLow: 0.5, epsHigh: 0.5 });
    expect(wide.clipRatioRegion).toBeLessThan(tight.clipRatioRegion);
    const higher = grpoLossValues(inputs(c), { ...base, epsHigh: 0.5 });
    const standard = grpoLossValues(inputs(c), base);
    expect(higher.clipRatioLow).toBe(standard.clipRatioLow);
    expect(higher.clipRatioHigh).toBeLessThanOrEqual(standard.clipRatioHigh);
  });

  it('the dual clip bounds the loss of negative-advantage tokens (never raises it)', () => {
    const plain = grpoLossValues(inputs(c), base);
    const dual = grpoLossValues(inputs(c), { ...base, dualClip: 1.5 });
    expect(dual.dualClipRatio).toBeGreaterThan(0);
    expect(dual.pgLoss).toBeLessThan(plain.pgLoss);
  });

  it('k3 and k2 are never negative, k1 can be; beta scales the KL term linearly', () => {
    const k1 = grpoLossValues(inputs(c), { ...base, beta: 1, klEstimator: 'k1' });
    const k2 = grpoLossValues(inputs(c), { ...base, beta: 1, klEstimator: 'k2' });
    const k3 = grpoLossValues(inputs(c), { ...base, beta: 1, klEstimator: 'k3' });
    expect(k3.kl).toBeGreaterThan(0);
    expect(k2.kl).toBeGreaterThan(0);
    expect(k1.kl).not.toBeCloseTo(k3.kl, 3);
    const half = grpoLossValues(inputs(c), { ...base, beta: 0.5, klEstimator: 'k3' });
    expect(half.klLoss).toBeCloseTo(k3.klLoss / 2, 6);
    expect(half.pgLoss).toBeCloseTo(k3.pgLoss, 6);
  });

  it('aggregations weigh short and long sequences differently', () => {
    // grpo averages per-sequence means (short sequences weigh more per token); bnpo weighs tokens equally.
    const g = grpoLossValues(inputs(c), base).pgLoss;
    const b = grpoLossValues(inputs(c), { ...base, lossAggregation: 'bnpo' }).pgLoss;
    const d = grpoLossValues(inputs(c), {
      ...base,
      lossAggregation: 'dr_grpo',
      maxCompletionLength: 100,
    }).pgLoss;
    expect(g).not.toBeCloseTo(b, 4);
    // dr_grpo divides by a constant: 100 * B is larger than the active-token count, so it is smaller in size.
    expect(Math.abs(d)).toBeLessThan(Math.abs(b));
  });

  it('sequence-level ratios give every token of a sequence the same ratio', () => {
    const seq = grpoLossValues(inputs(c), { ...base, importanceSampling: 'sequence' });
    const tok = grpoLossValues(inputs(c), base);
    expect(seq.ratioMean).not.toBeCloseTo(tok.ratioMean, 3);
  });

  it('explains bad input: missing reference with beta, mismatched shapes', () => {
    const { refLogProbs: _ref, ...noRef } = inputs(c);
    expect(() => grpoLoss(noRef, { ...base, beta: 0.1 })).toThrow(/beta > 0 needs refLogProbs/);
    expect(() => grpoLoss({ ...inputs(c), advantages: tf.tensor1d([1]) }, base)).toThrow(
      /advantages has 1 entries for 4/,
    );
    expect(() => grpoLoss({ ...inputs(c), mask: tf.ones([4, 2]) as tf.Tensor2D }, base)).toThrow(
      /mask has shape \[4,2\]/,
    );
    expect(() => grpoLoss(inputs(c), { ...base, epsLow: -0.2 })).toThrow(
      'grpoLoss: epsLow and epsHigh must be >= 0, got epsLow -0.2, epsHigh 0.2',
    );
  });

  it('leaves no tensors behind', () => {
    const ins = inputs(c);
    const before = tf.memory().numTensors;
    for (let k = 0; k < 5; k++) grpoLossValues(ins, { ...base, beta: 0.1, dualClip: 2 });
    expect(tf.memory().numTensors).toBe(before);
  });
});
