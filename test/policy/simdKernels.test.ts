import * as tf from '@tensorflow/tfjs';
import { version_wasm } from '@tensorflow/tfjs-backend-wasm';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cachedAttention,
  causalAttention,
  causalAttentionGrad,
  columnSum,
  decodeLayer,
  gelu,
  geluGrad,
  installSimdKernels,
  layerNormGrad,
  layerNormRows,
  simdKernelsAvailable,
  uninstallSimdKernels,
  wasmKernel,
} from '../../src/policy/simdKernels.ts';
import { HelperStuckError } from '../../src/policy/kernelThreads.ts';
import { installGemmKernel, uninstallGemmKernel } from '../../src/policy/gemmKernel.ts';
import { GPT, MASKED, causalBias } from '../../src/policy/gpt.ts';
import { sample } from '../../src/policy/sampler.ts';
import { PROMPTS, TINY, tinyModel, useWasm } from './helpers.ts';

beforeAll(async () => {
  await useWasm();
});

/** simdKernels.ts's kernels alone, or with gemmKernel.ts's over some of them (as selectBackend installs them). */
async function useKernels(which: 'simd' | 'gemm'): Promise<void> {
  uninstallGemmKernel();
  uninstallSimdKernels();
  expect(await installSimdKernels(version_wasm)).toBe(true);
  if (which === 'gemm') expect(await installGemmKernel(version_wasm)).toBe(true);
}

interface Case {
  B: number;
  H: number;
  hd: number;
  capacity: number;
  length: number;
  /** Leading masked columns of each row (left padding). */
  padding: number[];
  seed: number;
}

/** Random inputs for one decoding step; the caches hold junk beyond length - 1, which must never be read. */
function inputs(c: Case) {
  const { B, H, hd, capacity, length, seed } = c;
  const bias = new Float32Array(B * length);
  c.padding.forEach((pad, b) => bias.fill(MASKED, b * length, b * length + Math.min(pad, length - 1)));
  return {
    q: tf.randomNormal([B, H, 1, hd], 0, 1, 'float32', seed) as tf.Tensor4D,
    kNew: tf.randomNormal([B, H, 1, hd], 0, 1, 'float32', seed + 1) as tf.Tensor4D,
    vNew: tf.randomNormal([B, H, 1, hd], 0, 1, 'float32', seed + 2) as tf.Tensor4D,
    k: tf.randomNormal([B, H, capacity, hd], 0, 1, 'float32', seed + 3) as tf.Tensor4D,
    v: tf.randomNormal([B, H, capacity, hd], 0, 1, 'float32', seed + 4) as tf.Tensor4D,
    bias: tf.tensor4d(bias, [B, 1, 1, length]),
  };
}

/** What GPT computes with the concat cache: softmax(scale q K^T + bias) V over [past, new]. */
function reference(x: ReturnType<typeof inputs>, length: number, scale: number): tf.Tensor {
  return tf.tidy(() => {
    const [B, H, , hd] = x.k.shape;
    const past = (t: tf.Tensor4D) => tf.slice(t, [0, 0, 0, 0], [B, H, length - 1, hd]);
    const kAll = tf.concat([past(x.k), x.kNew], 2);
    const vAll = tf.concat([past(x.v), x.vNew], 2);
    const scores = tf.add(tf.matMul(tf.mul(x.q, scale), kAll, false, true), x.bias);
    return tf.matMul(tf.softmax(scores), vAll);
  });
}

const arbitraryCase: fc.Arbitrary<Case> = fc
  .record({
    B: fc.integer({ min: 1, max: 4 }),
    H: fc.integer({ min: 1, max: 4 }),
    hd: fc.constantFrom(4, 8, 12, 32),
    capacity: fc.integer({ min: 1, max: 40 }),
    fill: fc.double({ min: 0, max: 1, noNaN: true }),
    seed: fc.integer({ min: 1, max: 1_000_000 }),
  })
  .chain((c) =>
    fc.array(fc.integer({ min: 0, max: 6 }), { minLength: c.B, maxLength: c.B }).map((padding) => ({
      B: c.B,
      H: c.H,
      hd: c.hd,
      capacity: c.capacity,
      length: Math.max(1, Math.round(c.fill * c.capacity)),
      padding,
      seed: c.seed,
    })),
  );

describe('cachedAttention (wasm kernel over an in-place KV cache)', () => {
  afterAll(async () => {
    await installSimdKernels(version_wasm);
  });

  it('is installed by selectBackend for head sizes that are a multiple of 4', () => {
    expect(simdKernelsAvailable(32)).toBe(true);
    expect(simdKernelsAvailable(8)).toBe(true);
    expect(simdKernelsAvailable(6)).toBe(false);
  });

  // As simdKernels.ts has it, and gemmKernel.ts's with FMAs (which selectBackend installs over it).
  for (const kernels of ['simd', 'gemm'] as const) {
    it(`equals softmax(scale q K^T + bias) V over the concatenated cache, and writes the new key and value in place (${kernels})`, async () => {
      await useKernels(kernels);
      fc.assert(
        fc.property(arbitraryCase, (c) => {
          const x = inputs(c);
          const { B, H, hd, capacity, length } = c;
          const scale = 1 / Math.sqrt(hd);
          const expected = reference(x, length, scale);
          const kBefore = x.k.arraySync();
          const vBefore = x.v.arraySync();
          const got = cachedAttention(x.q, x.kNew, x.vNew, { k: x.k, v: x.v }, x.bias, length, scale);
          expect(got.shape).toEqual([B, H, 1, hd]);
          const want = expected.dataSync();
          const have = got.dataSync();
          for (let i = 0; i < want.length; i++) expect(Math.abs(have[i]! - want[i]!)).toBeLessThan(1e-5);
          // Position length - 1 now holds kNew / vNew; every other position is as it was.
          const kAfter = x.k.arraySync();
          const vAfter = x.v.arraySync();
          const kNew = x.kNew.arraySync();
          const vNew = x.vNew.arraySync();
          for (let b = 0; b < B; b++) {
            for (let h = 0; h < H; h++) {
              for (let s = 0; s < capacity; s++) {
                const written = s === length - 1;
                expect(kAfter[b]![h]![s]).toEqual(written ? kNew[b]![h]![0] : kBefore[b]![h]![s]);
                expect(vAfter[b]![h]![s]).toEqual(written ? vNew[b]![h]![0] : vBefore[b]![h]![s]);
              }
            }
          }
          tf.dispose([...Object.values(x), expected, got]);
        }),
        { numRuns: 40 },
      );
    });

    it(`gives a row the same result, bit for bit, whatever left padding precedes it (tfjs's lane-wise softmax does not) (${kernels})`, async () => {
      await useKernels(kernels);
      const H = 4;
      const hd = 8;
      const length = 9;
      const run = (pad: number): Float32Array =>
        tf.tidy(() => {
          const x = inputs({ B: 1, H, hd, capacity: length, length, padding: [0], seed: 7 });
          // The same keys and values behind `pad` masked columns of junk.
          const junk = tf.randomNormal([1, H, pad, hd], 0, 1, 'float32', 99);
          const k = tf.concat([junk, x.k], 2) as tf.Tensor4D;
          const v = tf.concat([junk, x.v], 2) as tf.Tensor4D;
          const bias = new Float32Array(pad + length).fill(MASKED, 0, pad);
          return cachedAttention(
            x.q,
            x.kNew,
            x.vNew,
            { k, v },
            tf.tensor4d(bias, [1, 1, 1, pad + length]),
            pad + length,
            0.3,
          ).dataSync() as Float32Array;
        });
      const alone = run(0);
      for (const pad of [1, 2, 3, 5]) expect(run(pad)).toEqual(alone);
    });
  }

  it('rejects a length beyond the capacity and mismatched shapes, naming them', () => {
    const x = inputs({ B: 2, H: 2, hd: 4, capacity: 5, length: 5, padding: [0, 0], seed: 1 });
    const cache = { k: x.k, v: x.v };
    expect(() => cachedAttention(x.q, x.kNew, x.vNew, cache, x.bias, 6, 1)).toThrow(
      /length must be an integer in \[1, 5\] \(the cache's capacity\), got 6/,
    );
    expect(() => cachedAttention(x.q, x.kNew, x.vNew, cache, x.bias, 4, 1)).toThrow(
      /bias must be float32 \[2, 1, 1, 4\], got float32 \[2, 1, 1, 5\]/,
    );
    expect(() =>
      cachedAttention(
        x.kNew,
        x.q,
        x.vNew,
        { k: x.k, v: x.k.reshape([2, 2, 4, 5]) as tf.Tensor4D },
        x.bias,
        5,
        1,
      ),
    ).toThrow(/the value cache must be float32 \[2, 2, 5, 4\]/);
    tf.dispose(Object.values(x));
  });

  it('decodeLayer rejects a length beyond the cache and a weight of the wrong shape, naming them', () => {
    tf.tidy(() => {
      const [B, H, capacity, hd] = [2, 2, 5, 4];
      const d = H * hd;
      const cache = {
        k: tf.zeros([B, H, capacity, hd]) as tf.Tensor4D,
        v: tf.zeros([B, H, capacity, hd]) as tf.Tensor4D,
      };
      const weights = {
        'ln1.g': tf.ones([d]),
        'ln1.b': tf.zeros([d]),
        'attn.wqkv': tf.zeros([d, 3 * d]),
        'attn.bqkv': tf.zeros([3 * d]),
        'attn.wo': tf.zeros([d, d]),
        'attn.bo': tf.zeros([d]),
        'ln2.g': tf.ones([d]),
        'ln2.b': tf.zeros([d]),
        'mlp.w1': tf.zeros([d, 4 * d]),
        'mlp.b1': tf.zeros([4 * d]),
        'mlp.w2': tf.zeros([4 * d, d]),
        'mlp.b2': tf.zeros([d]),
      };
      const x = tf.zeros([B, d]) as tf.Tensor2D;
      const bias = tf.zeros([B, 1, 1, 3]) as tf.Tensor4D;
      expect(decodeLayer(x, weights, cache, bias, 3, 1, 1e-5).shape).toEqual([B, d]);
      expect(() => decodeLayer(x, weights, cache, bias, 6, 1, 1e-5)).toThrow(
        /decodeLayer: length must be an integer in \[1, 5\] \(the cache's capacity\), got 6/,
      );
      expect(() =>
        decodeLayer(x, { ...weights, 'mlp.w2': tf.zeros([d, 4 * d]) }, cache, bias, 3, 1, 1e-5),
      ).toThrow(/decodeLayer: mlp.w2 must be float32 \[32, 8\], got float32 \[8, 32\]/);
    });
  });

  // With simdKernels.ts's kernels alone, the block's matmuls are tfjs-backend-wasm's own (XNNPACK),
  // which read their operands as tf.fused.matMul gives them (3-D).
  for (const kernels of ['simd', 'gemm'] as const) {
    it(`runs each decoding block as one RxrlDecodeLayer call, the floats of op by op (${kernels})`, async () => {
      await useKernels(kernels);
      const model = tinyModel(11, 40);
      const options = { maxNewTokens: 6, temperature: 1, topP: 0.9, eosId: -1, seed: 7 };
      try {
        GPT.fuseDecoding = false;
        const byOp = await sample(model, PROMPTS, options);
        GPT.fuseDecoding = true;
        let fused: Awaited<ReturnType<typeof sample>> = [];
        const profile = await tf.profile(async () => {
          fused = await sample(model, PROMPTS, options);
          return [];
        });
        expect(profile.kernels.filter((k) => k.name === 'RxrlDecodeLayer')).toHaveLength(5 * TINY.nLayers);
        expect(fused).toEqual(byOp);
      } finally {
        GPT.fuseDecoding = true;
        model.dispose();
        await useKernels('gemm');
      }
    });
  }

  it('lets the sampler decode what the concat cache decodes, without leaking tensors', async () => {
    const model = tinyModel(11);
    const prompts = [...PROMPTS, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]];
    const options = { maxNewTokens: TINY.contextLength, temperature: 1, eosId: -1, seed: 5 };
    uninstallSimdKernels();
    expect(simdKernelsAvailable(model.headDim)).toBe(false);
    const concat = await sample(model, prompts, options);
    expect(await installSimdKernels(version_wasm)).toBe(true);
    const before = tf.memory().numTensors;
    const inPlace = await sample(model, prompts, options);
    expect(tf.memory().numTensors).toBe(before);
    expect(inPlace.map((r) => r.tokens)).toEqual(concat.map((r) => r.tokens));
    // Rows run to the context length, so the last steps fill the cache to its capacity.
    expect(inPlace.map((r) => r.tokens.length)).toEqual(prompts.map((p) => TINY.contextLength - p.length));
    inPlace.forEach((row, b) =>
      row.logProbs.forEach((lp, i) => expect(Math.abs(lp - concat[b]!.logProbs[i]!)).toBeLessThan(1e-5)),
    );
    model.dispose();
  });

  it('is refused by GPT.run where it is not available', () => {
    const model = tinyModel(11);
    uninstallSimdKernels();
    tf.tidy(() => {
      const k = tf.zeros([1, TINY.nHeads, 4, TINY.dModel / TINY.nHeads]) as tf.Tensor4D;
      const layers = Array.from({ length: TINY.nLayers }, () => ({ k, v: k }));
      expect(() =>
        model.run(tf.tensor2d([[1]], [1, 1], 'int32'), {
          bias: tf.zeros([1, 1, 1, 2]) as tf.Tensor4D,
          inPlace: { layers, length: 1 },
        }),
      ).toThrow(
        /in-place KV cache takes one token per row, no `past`, and the wasm backend with rxrl's cached-attention kernels/,
      );
    });
    model.dispose();
  });
});

function expectClose(got: tf.Tensor, want: tf.Tensor, tolerance = 1e-5): void {
  expect(got.shape).toEqual(want.shape);
  const a = got.dataSync();
  const b = want.dataSync();
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (1 + Math.abs(b[i]!)));
  expect(worst).toBeLessThan(tolerance);
}

const rowsAndWidth = fc.record({
  R: fc.integer({ min: 1, max: 40 }),
  d: fc.integer({ min: 1, max: 12 }).map((n) => n * 4),
  seed: fc.integer({ min: 1, max: 1_000_000 }),
});

describe('wasmKernel', () => {
  it('frees what a failed call made, but not where a helper is stuck and may still write there', () => {
    const backend = tf.backend() as unknown as {
      numDataIds(): number;
      disposeData(dataId: object): void;
    };
    const made: tf.TensorInfo[] = [];
    const failing = (error: Error) =>
      wasmKernel(({ output }) => {
        made.push(output([8]), output([16]));
        throw error;
      });
    const call = (kernel: tf.KernelFunc) =>
      kernel({ inputs: {}, attrs: {}, backend: tf.backend() } as unknown as Parameters<tf.KernelFunc>[0]);
    const before = backend.numDataIds();
    expect(() => call(failing(new Error('a trap')))).toThrow('a trap');
    expect(backend.numDataIds()).toBe(before);
    expect(() => call(failing(new HelperStuckError('stuck')))).toThrow('stuck');
    expect(backend.numDataIds()).toBe(before + 2);
    for (const t of made.slice(2)) backend.disposeData(t.dataId);
    // A call that succeeds keeps what it returns.
    const out = call(wasmKernel(({ output }) => output([4]))) as tf.TensorInfo;
    expect(backend.numDataIds()).toBe(before + 1);
    backend.disposeData(out.dataId);
  });
});

describe('LayerNorm and column-sum kernels', () => {
  const EPS = 1e-5;
  /** LayerNorm in tfjs ops, differentiated by tfjs: the reference for the kernels. */
  const reference = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
    const { mean, variance } = tf.moments(x, 1, true);
    return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, EPS))), g), b);
  };

  it('LayerNorm rows equal (x - mean) / sqrt(var + eps) * gain + bias, with xhat and rstd', () => {
    fc.assert(
      fc.property(rowsAndWidth, ({ R, d, seed }) => {
        tf.tidy(() => {
          const x = tf.add(tf.mul(tf.randomNormal([R, d], 0, 1, 'float32', seed), 3), 1) as tf.Tensor2D;
          const g = tf.randomNormal([d], 1, 0.5, 'float32', seed + 1);
          const b = tf.randomNormal([d], 0, 1, 'float32', seed + 2);
          const [y, xhat, rstd] = layerNormRows(x, g, b, EPS);
          expectClose(y, reference(x, g, b));
          const { mean, variance } = tf.moments(x, 1, true);
          const wantRstd = tf.rsqrt(tf.add(variance, EPS));
          expectClose(rstd, wantRstd);
          expectClose(xhat, tf.mul(tf.sub(x, mean), wantRstd));
        });
      }),
      { numRuns: 30 },
    );
  });

  it("LayerNorm's gradient equals tfjs's autodiff of the reference", () => {
    fc.assert(
      fc.property(rowsAndWidth, ({ R, d, seed }) => {
        tf.tidy(() => {
          const x = tf.randomNormal([R, d], 0, 2, 'float32', seed) as tf.Tensor2D;
          const g = tf.randomNormal([d], 1, 0.5, 'float32', seed + 1);
          const b = tf.randomNormal([d], 0, 1, 'float32', seed + 2);
          const dy = tf.randomNormal([R, d], 0, 1, 'float32', seed + 3);
          const want = tf.grads((xs: tf.Tensor, gs: tf.Tensor, bs: tf.Tensor) => reference(xs, gs, bs))(
            [x, g, b],
            dy,
          );
          const [, xhat, rstd] = layerNormRows(x, g, b, EPS);
          const got = layerNormGrad(dy, xhat, rstd, g);
          got.forEach((t, i) => expectClose(t, want[i]!, 1e-4));
        });
      }),
      { numRuns: 30 },
    );
  });

  it('column sums equal tf.sum over axis 0', () => {
    fc.assert(
      fc.property(rowsAndWidth, ({ R, d, seed }) => {
        tf.tidy(() => {
          const x = tf.randomNormal([R, d], 0, 1, 'float32', seed) as tf.Tensor2D;
          expectClose(columnSum(x), tf.sum(x, 0));
        });
      }),
      { numRuns: 30 },
    );
  });

  // As simdKernels.ts has it, and gemmKernel.ts's with fused multiply-adds (which selectBackend installs
  // over it, for sizes that are a multiple of 8; the others stay with simdKernels.ts's).
  for (const kernels of ['simd', 'gemm'] as const) {
    it(`GELU equals x * sigmoid(1.702 x) and its gradient tfjs autodiff of that, out to large |x| (${kernels})`, async () => {
      await useKernels(kernels);
      const reference = (x: tf.Tensor) => tf.mul(x, tf.sigmoid(tf.mul(x, 1.702)));
      fc.assert(
        fc.property(rowsAndWidth, fc.constantFrom(1, 10, 1000), ({ R, d, seed }, spread) => {
          tf.tidy(() => {
            const x = tf.randomNormal([R, d], 0, spread, 'float32', seed);
            const dy = tf.randomNormal([R, d], 0, 1, 'float32', seed + 1);
            const [y, s] = gelu(x);
            expectClose(y, reference(x));
            expectClose(s, tf.sigmoid(tf.mul(x, 1.702)));
            expectClose(geluGrad(dy, x, s), tf.grad(reference)(x, dy));
          });
        }),
        { numRuns: 30 },
      );
    });
  }

  it('refuse rows whose width is not a multiple of 4, which they would run past', () => {
    tf.tidy(() => {
      const x = tf.ones([3, 6]) as tf.Tensor2D;
      expect(() => columnSum(x)).toThrow(/columnSum: the row width must be a multiple of 4, got 6/);
      expect(() => gelu(tf.ones([3, 3]))).toThrow(/gelu: the size must be a multiple of 4, got 9/);
      expect(() => layerNormRows(x, tf.ones([6]), tf.zeros([6]), EPS)).toThrow(
        /layerNormRows: the row width must be a multiple of 4, got 6/,
      );
      const y = tf.ones([3, 8]) as tf.Tensor2D;
      expect(() => layerNormRows(y, tf.ones([6]), tf.zeros([8]), EPS)).toThrow(
        /layerNormRows: gain must be float32 \[8\], got float32 \[6\]/,
      );
    });
  });
});

describe('causal attention kernels (training)', () => {
  const shapes = fc.record({
    B: fc.integer({ min: 1, max: 3 }),
    T: fc.integer({ min: 1, max: 20 }),
    H: fc.integer({ min: 1, max: 3 }),
    hd: fc.constantFrom(4, 8, 16),
    seed: fc.integer({ min: 1, max: 1_000_000 }),
  });

  /** What GPT computes without the kernels: heads split out, masked scores, softmax, merged back. */
  const reference = (B: number, T: number, H: number, hd: number, scale: number) => {
    const heads = (t: tf.Tensor) => tf.transpose(tf.reshape(t, [B, T, H, hd]), [0, 2, 1, 3]);
    return (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => {
      const scores = tf.add(tf.matMul(tf.mul(heads(q), scale), heads(k), false, true), causalBias(T));
      return tf.reshape(tf.transpose(tf.matMul(tf.softmax(scores), heads(v)), [0, 2, 1, 3]), [B * T, H * hd]);
    };
  };

  // As simdKernels.ts has them, and with their products on gemmKernel.ts's matmul (which
  // selectBackend installs over them); T up to 40 takes gemm's 4-row blocks and 8-, 4- and
  // 1-3-column panels, and the rows left over after the blocks.
  for (const products of ['simd', 'gemm'] as const) {
    it(`equal masked softmax attention, and its gradients equal tfjs autodiff of that (${products})`, async () => {
      await useKernels(products);
      fc.assert(
        fc.property(shapes, fc.integer({ min: 1, max: 40 }), ({ B, T: smallT, H, hd, seed }, bigT) => {
          const T = products === 'gemm' ? bigT : smallT;
          tf.tidy(() => {
            const scale = 1 / Math.sqrt(hd);
            const make = (i: number) =>
              tf.randomNormal([B * T, H * hd], 0, 1, 'float32', seed + i) as tf.Tensor2D;
            const [q, k, v, dy] = [make(0), make(1), make(2), make(3)];
            const f = reference(B, T, H, hd, scale);
            const [y, p] = causalAttention(q, k, v, { B, T, H }, scale);
            expectClose(y, f(q, k, v));
            const want = tf.grads(f)([q, k, v], dy);
            causalAttentionGrad(dy, q, k, v, p, { B, T, H }, scale).forEach((g, i) =>
              expectClose(g, want[i]!, 1e-4),
            );
          });
        }),
        { numRuns: 30 },
      );
    });
  }

  it("make GPT's log-probs and their gradients what tfjs ops give (learned and rope positions)", async () => {
    for (const positions of ['learned', 'rope'] as const) {
      const model = tinyModel(3, 1, positions);
      const ids = tf.tensor2d(
        Array.from({ length: 3 }, (_, b) => Array.from({ length: 12 }, (_, t) => ((b * 5 + t * 7) % 23) + 1)),
        [3, 12],
        'int32',
      );
      const mask = tf.ones([3, 12]) as tf.Tensor2D;
      const weights = tf.linspace(-1, 1, 11);
      const run = () =>
        tf.variableGrads(() => tf.sum(tf.mul(model.sequenceLogProbs(ids, mask), weights)) as tf.Scalar);
      uninstallSimdKernels();
      expect(simdKernelsAvailable(model.headDim)).toBe(false);
      const stock = run();
      expect(await installSimdKernels(version_wasm)).toBe(true);
      const fused = run();
      expectClose(fused.value, stock.value);
      for (const name of Object.keys(stock.grads)) expectClose(fused.grads[name]!, stock.grads[name]!, 1e-4);
      tf.dispose([stock.value, fused.value, ...Object.values(stock.grads), ...Object.values(fused.grads)]);
      tf.dispose([ids, mask, weights]);
      model.dispose();
    }
  });

  it('refuse a width that does not split into heads of a multiple of 4', () => {
    tf.tidy(() => {
      const x = tf.ones([6, 12]) as tf.Tensor2D;
      expect(() => causalAttention(x, x, x, { B: 2, T: 3, H: 5 }, 1)).toThrow(
        /width 12 does not split into 5 heads/,
      );
      expect(() => causalAttention(x, x, x, { B: 2, T: 3, H: 2 }, 1)).toThrow(
        /the head size must be a multiple of 4, got 6/,
      );
      expect(() => causalAttention(x, x, x, { B: 3, T: 3, H: 3 }, 1)).toThrow(
        /q must be float32 \[9, 12\], got float32 \[6, 12\]/,
      );
    });
  });
});
