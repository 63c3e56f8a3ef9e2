import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { causalBias, GPT, pickTokenLogProbs, tokenEntropy } from '../../src/policy/gpt.ts';
import { TINY, tinyModel, useWasm } from './helpers.ts';

beforeAll(useWasm);

const ids = (): tf.Tensor2D =>
  tf.tensor2d(
    [
      [1, 5, 9, 2, 7, 7, 3, 0],
      [4, 4, 8, 1, 6, 2, 0, 0],
    ],
    undefined,
    'int32',
  );
const mask = (): tf.Tensor2D =>
  tf.tensor2d([
    [0, 0, 0, 1, 1, 1, 1, 1],
    [0, 0, 1, 1, 1, 1, 0, 0],
  ]);

/** The same network written with stock tfjs ops and autodiff: the reference for values and gradients. */
function referenceLogits(model: GPT, tokens: tf.Tensor2D): tf.Tensor3D {
  const P = (name: string): tf.Variable => model.params.get(name)!;
  const [B, T] = tokens.shape;
  const { dModel: d, nHeads: H, vocabSize: V } = TINY;
  const hd = d / H;
  const norm = (x: tf.Tensor, name: string): tf.Tensor => {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.add(
      tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, 1e-5))), P(`${name}.g`)),
      P(`${name}.b`),
    );
  };
  const oneHot = tf.cast(tf.oneHot(tf.reshape(tokens, [-1]), V), 'float32');
  const rope = model.config.positionEncoding === 'rope';
  let x = tf.matMul(oneHot, P('wte'));
  if (!rope) {
    const positions = tf.slice(P('wpe'), [0, 0], [T, d]);
    x = tf.reshape(tf.add(tf.reshape(x, [B, T, d]), positions), [B * T, d]);
  }
  // RoPE as the paper writes it: each pair (x_j, x_{j + hd/2}) of a head turned by t * 10000^(-2j/hd).
  const half = hd / 2;
  const angles = tf.outerProduct(
    tf.range(0, T),
    tf.pow(10000, tf.div(tf.mul(tf.range(0, half), -2), hd)) as tf.Tensor1D,
  );
  const [cos, sin] = [tf.cos(angles), tf.sin(angles)];
  const turn = (t: tf.Tensor): tf.Tensor => {
    const [x1, x2] = tf.split(t, 2, 3);
    return tf.concat(
      [tf.sub(tf.mul(x1!, cos), tf.mul(x2!, sin)), tf.add(tf.mul(x2!, cos), tf.mul(x1!, sin))],
      3,
    );
  };
  const bias = tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([T, T]), -1, 0)), -1e9);
  for (let l = 0; l < TINY.nLayers; l++) {
    const qkv = tf.add(tf.matMul(norm(x, `h${l}.ln1`), P(`h${l}.attn.wqkv`)), P(`h${l}.attn.bqkv`));
    const [q, k, v] = tf
      .split(qkv, 3, 1)
      .map((t) => tf.transpose(tf.reshape(t, [B, T, H, hd]), [0, 2, 1, 3]));
    const [qr, kr] = rope ? [turn(q!), turn(k!)] : [q!, k!];
    const att = tf.softmax(tf.add(tf.div(tf.matMul(qr, kr, false, true), Math.sqrt(hd)), bias));
    const y = tf.reshape(tf.transpose(tf.matMul(att, v!), [0, 2, 1, 3]), [B * T, d]);
    x = tf.add(x, tf.add(tf.matMul(y, P(`h${l}.attn.wo`)), P(`h${l}.attn.bo`)));
    const hidden = tf.add(tf.matMul(norm(x, `h${l}.ln2`), P(`h${l}.mlp.w1`)), P(`h${l}.mlp.b1`));
    const gelu = tf.mul(hidden, tf.sigmoid(tf.mul(hidden, 1.702)));
    x = tf.add(x, tf.add(tf.matMul(gelu, P(`h${l}.mlp.w2`)), P(`h${l}.mlp.b2`)));
  }
  return tf.reshape(tf.matMul(norm(x, 'lnf'), P('head')), [B, T, V]);
}

/** Moves LayerNorm and bias parameters off their initial 1 / 0 so every gradient term matters. */
function perturb(model: GPT): void {
  let seed = 100;
  for (const [name, v] of model.params) {
    if (/ln|\.b/.test(name))
      tf.tidy(() => v.assign(tf.add(v, tf.randomNormal(v.shape, 0, 0.3, 'float32', seed++))));
  }
}

describe('GPT', () => {
  it('validates its config', () => {
    expect(() => new GPT({ ...TINY, nHeads: 5 })).toThrow(/dModel must be a multiple of nHeads/);
    expect(() => new GPT({ ...TINY, nLayers: 0 })).toThrow(/nLayers/);
  });

  it('is seeded: the same seed gives the same weights, another seed others', () => {
    const [a, b, c] = [tinyModel(7), tinyModel(7), tinyModel(8)];
    const wte = (m: GPT): number[] => Array.from(m.params.get('wte')!.dataSync());
    expect(wte(a)).toEqual(wte(b));
    expect(wte(a)).not.toEqual(wte(c));
    [a, b, c].forEach((m) => m.dispose());
  });

  it.each(['learned', 'rope'] as const)(
    'forward and its gradients match the same network in stock tfjs ops (%s positions)',
    (positions) => {
      const model = tinyModel(3, 1, positions);
      perturb(model);
      const tokens = ids();
      const weights = tf.randomNormal([2, 8, TINY.vocabSize], 0, 1, 'float32', 9);
      const fast = tf.variableGrads(() => tf.sum(tf.mul(model.forward(tokens), weights)), model.variables());
      const slow = tf.variableGrads(
        () => tf.sum(tf.mul(referenceLogits(model, tokens), weights)),
        model.variables(),
      );
      expect(fast.value.dataSync()[0]).toBeCloseTo(slow.value.dataSync()[0]!, 4);
      for (const [name, variable] of model.params) {
        const [g, r] = [fast.grads[variable.name]!, slow.grads[variable.name]!];
        const scale = tf.max(tf.abs(r)).dataSync()[0]!;
        const error = tf.max(tf.abs(tf.sub(g, r))).dataSync()[0]!;
        expect(error / scale, name).toBeLessThan(1e-4);
      }
      model.dispose();
    },
  );

  it('sequenceLogProbs picks log softmax(logits / T) of each next token, masked', () => {
    const model = tinyModel(4);
    const tokens = ids();
    const temperature = 0.7;
    const logits = model.forward(tokens).arraySync();
    const picked = model.sequenceLogProbs(tokens, mask(), temperature).arraySync();
    const rows = tokens.arraySync();
    const m = mask().arraySync();
    for (let b = 0; b < 2; b++) {
      for (let t = 0; t < 7; t++) {
        const scaled = logits[b]![t]!.map((z) => z / temperature);
        const max = Math.max(...scaled);
        const logZ = max + Math.log(scaled.reduce((s, z) => s + Math.exp(z - max), 0));
        const expected = m[b]![t + 1] ? scaled[rows[b]![t + 1]!]! - logZ : 0;
        expect(picked[b]![t]).toBeCloseTo(expected, 4);
      }
    }
    model.dispose();
  });

  it('with RoPE, attention sees only relative positions: the same tokens placed later give the same logits', () => {
    const positionsFrom = (start: number) =>
      tf.tensor2d(
        [Array.from({ length: 8 }, (_, t) => start + t), Array.from({ length: 8 }, (_, t) => start + t)],
        undefined,
        'int32',
      );
    const logits = (model: GPT, start: number) =>
      tf.tidy(() =>
        model.run(ids(), { positions: positionsFrom(start), bias: causalBias(8) }).logits.arraySync(),
      );
    const rope = tinyModel(4, 1, 'rope');
    perturb(rope);
    const [at0, at13] = [logits(rope, 0), logits(rope, 13)];
    const diff = (a: number[][], b: number[][]) =>
      Math.max(...a.flatMap((row, i) => row.map((v, j) => Math.abs(v - b[i]![j]!))));
    expect(diff(at0, at13)).toBeLessThan(1e-4);
    // The same check fails with learned positions, which are absolute.
    const learned = tinyModel(4, 1, 'learned');
    perturb(learned);
    expect(diff(logits(learned, 0), logits(learned, 13))).toBeGreaterThan(1e-3);
    expect(rope.params.has('wpe')).toBe(false);
    rope.dispose();
    learned.dispose();
  });

  it('gradients of sequenceLogProbs reach every variable', () => {
    const model = tinyModel(5);
    perturb(model);
    const { value, grads } = tf.variableGrads(
      () => tf.sum(model.sequenceLogProbs(ids(), mask(), 1)),
      model.variables(),
    );
    expect(value.dataSync()[0]).toBeLessThan(0);
    for (const [name, variable] of model.params) {
      const grad = grads[variable.name];
      expect(grad, name).toBeDefined();
      expect(tf.max(tf.abs(grad!)).dataSync()[0], name).toBeGreaterThan(0);
    }
    model.dispose();
  });

  it('gives one forward both log-probs and entropies', () => {
    const model = tinyModel(6);
    const tokens = ids();
    const all = model.nextTokenLogProbs(tokens, 1);
    const entropy = tokenEntropy(all, mask()).arraySync();
    expect(pickTokenLogProbs(all, tokens, mask()).arraySync()).toEqual(
      model.sequenceLogProbs(tokens, mask()).arraySync(),
    );
    // A fresh model is close to uniform: entropy near log V where masked in, 0 where masked out.
    expect(entropy[0]![3]).toBeGreaterThan(Math.log(TINY.vocabSize) - 0.2);
    expect(entropy[0]![3]).toBeLessThanOrEqual(Math.log(TINY.vocabSize) + 1e-4);
    expect(entropy[1]![6]).toBe(0);
    model.dispose();
  });

  it('copies weights between models by name and rejects mismatches', () => {
    const [a, b] = [tinyModel(1), tinyModel(2)];
    b.assignWeights(a.params);
    const tokens = ids();
    expect(b.forward(tokens).arraySync()).toEqual(a.forward(tokens).arraySync());
    const c = new GPT({ ...TINY, dModel: 16 });
    expect(() => c.assignWeights(a.params)).toThrow(/wte has shape \[24, 16\], got \[24, 32\]/);
    [a, b, c].forEach((m) => m.dispose());
  });
});
