import * as tf from '@tensorflow/tfjs';
import { version_wasm } from '@tensorflow/tfjs-backend-wasm';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  causalAttentionQkv,
  causalAttentionQkvGrad,
  GEMM_BLOCKS,
  GEMM_MIN_ROWS,
  gemmKernelInstalled,
  installGemmKernel,
  packedWeightsHeld,
  uninstallGemmKernel,
} from '../../src/policy/gemmKernel.ts';
import { causalAttention, causalAttentionGrad } from '../../src/policy/simdKernels.ts';
import { useWasm } from './helpers.ts';

beforeAll(async () => {
  await useWasm();
});

afterAll(async () => {
  await installGemmKernel(version_wasm);
});

interface Case {
  batch: number[];
  M: number;
  K: number;
  N: number;
  transposeA: boolean;
  transposeB: boolean;
  bias: boolean;
  seed: number;
}

const arbitraryCase: fc.Arbitrary<Case> = fc.record({
  batch: fc.constantFrom<number[]>([], [1], [2], [2, 1]),
  // Rows that fill 6-row blocks and rows that leave 1-5 past the last (a 4-row block, single rows), on both sides of the row
  // threshold. (Below it, the kernel takes a bias with a transpose or a batch even where it packs
  // B: tfjs-backend-wasm 4.22's own _FusedMatMul gets those wrong.)
  // Now and then more than one block of rows or of K.
  M: fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 1, max: GEMM_MIN_ROWS + 70 }) },
    { weight: 1, arbitrary: fc.integer({ min: GEMM_BLOCKS.rows - 3, max: 2 * GEMM_BLOCKS.rows + 9 }) },
  ),
  K: fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 48 }) },
    { weight: 1, arbitrary: fc.integer({ min: GEMM_BLOCKS.k - 3, max: 2 * GEMM_BLOCKS.k + 9 }) },
  ),
  // Whole 8-column panels, a 4-column one, and padded ones.
  N: fc.integer({ min: 1, max: 27 }),
  transposeA: fc.boolean(),
  transposeB: fc.boolean(),
  bias: fc.boolean(),
  seed: fc.integer({ min: 1, max: 1_000_000 }),
});

function operands(c: Case) {
  const { batch, M, K, N, seed } = c;
  const a = tf.randomNormal([...batch, ...(c.transposeA ? [K, M] : [M, K])], 0, 1, 'float32', seed);
  const b = tf.randomNormal([...batch, ...(c.transposeB ? [N, K] : [K, N])], 0, 1, 'float32', seed + 1);
  const bias = c.bias ? (tf.randomNormal([N], 0, 1, 'float32', seed + 2) as tf.Tensor1D) : undefined;
  return { a, b, bias };
}

function product(c: Case, x: ReturnType<typeof operands>): tf.Tensor {
  const { a, b, bias } = x;
  return bias
    ? tf.fused.matMul({ a, b, bias, transposeA: c.transposeA, transposeB: c.transposeB })
    : tf.matMul(a, b, c.transposeA, c.transposeB);
}

/** The product in float64, from the operands' values. */
function reference(c: Case, x: ReturnType<typeof operands>): Float64Array {
  const { M, K, N } = c;
  const entries = c.batch.reduce((n, s) => n * s, 1);
  const [a, b] = [x.a.dataSync(), x.b.dataSync()];
  const bias = x.bias?.dataSync();
  const out = new Float64Array(entries * M * N);
  for (let e = 0; e < entries; e++) {
    for (let i = 0; i < M; i++) {
      for (let n = 0; n < N; n++) {
        let sum = bias ? bias[n]! : 0;
        for (let k = 0; k < K; k++) {
          const av = a[e * M * K + (c.transposeA ? k * M + i : i * K + k)]!;
          const bv = b[e * K * N + (c.transposeB ? n * K + k : k * N + n)]!;
          sum += av * bv;
        }
        out[(e * M + i) * N + n] = sum;
      }
    }
  }
  return out;
}

describe('the relaxed-SIMD matmul kernel', () => {
  it('is installed by selectBackend on this Node', () => {
    expect(gemmKernelInstalled()).toBe(true);
  });

  it('equals the product computed in float64, with transposes, batches, a bias, and any M, K, N', () => {
    fc.assert(
      fc.property(arbitraryCase, (c) => {
        const x = operands(c);
        const got = product(c, x);
        expect(got.shape).toEqual([...c.batch, c.M, c.N]);
        const want = reference(c, x);
        const have = got.dataSync();
        // Sums of K products of unit normals: rounding error grows like sqrt(K) float32 ulps.
        for (let i = 0; i < want.length; i++)
          expect(Math.abs(have[i]! - want[i]!)).toBeLessThan(1e-5 * (1 + c.K));
        tf.dispose([x.a, x.b, ...(x.bias ? [x.bias] : []), got]);
      }),
      {
        numRuns: 60,
        // Always: several blocks of rows and of K at once (the sums between blocks of K wait in
        // panel order), ending in two 4-column panels and a partial one, with each transpose.
        examples: [false, true].map((t): [Case] => [
          {
            batch: [],
            M: 2 * GEMM_BLOCKS.rows + 10,
            K: 2 * GEMM_BLOCKS.k + 5,
            N: 23,
            transposeA: t,
            transposeB: !t,
            bias: t,
            seed: 11,
          },
        ]),
      },
    );
  });

  it('gives a row the same result, bit for bit, whatever rows surround it', () => {
    const K = GEMM_BLOCKS.k + 37;
    const N = 22;
    const rows = tf.randomNormal([3, K], 0, 1, 'float32', 5);
    const b = tf.randomNormal([K, N], 0, 1, 'float32', 6);
    const others = tf.randomNormal([GEMM_BLOCKS.rows + 200, K], 0, 1, 'float32', 7);
    // The three rows at the start of a 6-row block, straddling two 6-row blocks, straddling two blocks
    // of rows, and straddling the last 6-row block and the 4-row block after it (455 rows: 75 x 6 + 4 + 1).
    const results = [0, 64, GEMM_BLOCKS.rows - 1, GEMM_BLOCKS.rows + 197].map((at) =>
      tf.tidy(() => {
        const a = tf.concat([tf.slice(others, 0, at), rows, tf.slice(others, at)]);
        return tf.slice(tf.matMul(a, b), at, 3).dataSync();
      }),
    );
    for (const result of results.slice(1)) expect(result).toEqual(results[0]);
    tf.dispose([rows, b, others]);
  });

  it(`leaves batched matmuls that pack B and have fewer than ${GEMM_MIN_ROWS} rows, and fused activations, to the kernels it replaced`, async () => {
    const run = (): tf.TypedArray[] =>
      tf.tidy(() => {
        const b = tf.randomNormal([20, 12], 0, 1, 'float32', 2) as tf.Tensor2D;
        const bTransposed = tf.randomNormal([12, 20], 0, 1, 'float32', 4) as tf.Tensor2D;
        const small = tf.randomNormal([GEMM_MIN_ROWS - 1, 20], 0, 1, 'float32', 1) as tf.Tensor2D;
        const big = tf.randomNormal([GEMM_MIN_ROWS + 5, 20], 0, 1, 'float32', 3) as tf.Tensor2D;
        const smalls = tf.randomNormal([2, GEMM_MIN_ROWS - 1, 20], 0, 1, 'float32', 5) as tf.Tensor3D;
        const bsTransposed = tf.randomNormal([2, 12, 20], 0, 1, 'float32', 6) as tf.Tensor3D;
        return [
          tf.matMul(smalls, bsTransposed, false, true).dataSync(),
          tf.fused.matMul({ a: big, b, activation: 'relu' }).dataSync(),
          tf.matMul(big, b).dataSync(),
          tf.matMul(small, b).dataSync(),
          tf.matMul(small, bTransposed, false, true).dataSync(),
        ];
      });
    const withKernel = run();
    uninstallGemmKernel();
    expect(gemmKernelInstalled()).toBe(false);
    const without = run();
    await installGemmKernel(version_wasm);
    expect(withKernel[0]).toEqual(without[0]);
    expect(withKernel[1]).toEqual(without[1]);
    // These do run on the kernel (B read in place, or packed for a first product of few rows): FMAs
    // round differently from XNNPACK's sums.
    expect(withKernel[2]).not.toEqual(without[2]);
    expect(withKernel[3]).not.toEqual(without[3]);
    expect(withKernel[4]).not.toEqual(without[4]);
  });
});

describe('weights packed for decoding', () => {
  // Few rows by the same B again and again: the second call packs B, later ones read the packed copy.
  const decode = (x: tf.Tensor2D, w: tf.Tensor2D, bias: tf.Tensor1D): Float32Array =>
    tf.tidy(() => tf.fused.matMul({ a: x, b: w, bias }).dataSync() as Float32Array);

  it('gives bit for bit what B read in place gives, across blocks of K and partial panels; reads a reshape of B as itself', () => {
    // K crosses a block of K; N = 28 is three panels of 8 and one of 4.
    const [K, N] = [GEMM_BLOCKS.k + 45, 28];
    const x = tf.randomNormal([16, K], 0, 1, 'float32', 11) as tf.Tensor2D;
    const w = tf.randomNormal([K, N], 0, 1, 'float32', 12) as tf.Tensor2D;
    const bias = tf.randomNormal([N], 0, 1, 'float32', 13) as tf.Tensor1D;
    tf.tidy(() => tf.matMul(x, tf.ones([K, 4])).dataSync()); // frees what earlier tests left behind
    const held = packedWeightsHeld();
    const inPlace = decode(x, w, bias);
    expect(packedWeightsHeld()).toBe(held);
    const packing = decode(x, w, bias);
    expect(packedWeightsHeld()).toBe(held + 1);
    const packed = decode(x, w, bias);
    expect(packing).toEqual(inPlace);
    expect(packed).toEqual(inPlace);
    // And both are the product.
    const [xs, ws, bs] = [x.dataSync(), w.dataSync(), bias.dataSync()];
    for (const [i, n] of [
      [0, 0],
      [7, 27],
      [15, 13],
    ] as const) {
      let sum = bs[n]!;
      for (let k = 0; k < K; k++) sum += xs[i * K + k]! * ws[k * N + n]!;
      expect(packed[i * N + n]).toBeCloseTo(sum, 3);
    }
    // A reshape of w shares its dataId: it is read as itself, not as w's packed copy.
    const [K2, N2] = [43, (K * N) / 43];
    const view = tf.reshape(w, [K2, N2]) as tf.Tensor2D;
    const y = tf.randomNormal([16, K2], 0, 1, 'float32', 14) as tf.Tensor2D;
    const noBias = tf.zeros([N2]) as tf.Tensor1D;
    const viaView = decode(y, view, noBias);
    const ys = y.dataSync();
    for (const [i, n] of [
      [0, 0],
      [9, N2 - 1],
      [15, 101],
    ] as const) {
      let sum = 0;
      for (let k = 0; k < K2; k++) sum += ys[i * K2 + k]! * ws[k * N2 + n]!;
      expect(viaView[i * N2 + n]).toBeCloseTo(sum, 3);
    }
    tf.dispose([x, w, bias, view, y, noBias]);
  });

  it('packs a transposed B, or one of N not a multiple of 4, from its second use (its first product has the same floats); a copy serves only its layout', () => {
    const K = 36;
    const x = tf.randomNormal([16, K], 0, 1, 'float32', 31) as tf.Tensor2D;
    // Square, so that w and w^T have the same shape.
    const w = tf.randomNormal([K, K], 0, 1, 'float32', 32) as tf.Tensor2D;
    const head = tf.randomNormal([K, 102], 0, 1, 'float32', 33) as tf.Tensor2D;
    const [xs, ws, hs] = [x.dataSync(), w.dataSync(), head.dataSync()];
    const product = (
      b: Float32Array | Int32Array | Uint8Array,
      N: number,
      transposed: boolean,
      i: number,
      n: number,
    ) => {
      let sum = 0;
      for (let k = 0; k < K; k++) sum += xs[i * K + k]! * b[transposed ? n * K + k : k * N + n]!;
      return sum;
    };
    const check = (
      have: tf.TypedArray,
      b: Float32Array | Int32Array | Uint8Array,
      N: number,
      transposed: boolean,
    ) => {
      for (const [i, n] of [
        [0, 0],
        [7, N - 1],
        [15, 5],
      ] as const)
        expect(have[i * N + n]).toBeCloseTo(product(b, N, transposed, i, n), 3);
    };
    tf.tidy(() => tf.matMul(x, tf.ones([K, 4])).dataSync()); // frees what earlier tests left behind
    const held = packedWeightsHeld();
    const uses: tf.TypedArray[][] = [];
    for (let use = 0; use < 3; use++) {
      const transposed = tf.tidy(() => tf.matMul(x, w, false, true).dataSync());
      const wide = tf.tidy(() => tf.matMul(x, head).dataSync());
      check(transposed, ws, K, true);
      check(wide, hs, 102, false);
      uses.push([transposed, wide]);
    }
    expect(packedWeightsHeld()).toBe(held + 2);
    // The first use (packed for that product alone) gives the floats of the later ones (a kept copy).
    expect(uses[0]).toEqual(uses[1]);
    expect(uses[1]).toEqual(uses[2]);
    // w untransposed: w's copy holds w^T's layout, so this one is read in place.
    for (let use = 0; use < 2; use++)
      check(
        tf.tidy(() => tf.matMul(x, w).dataSync()),
        ws,
        K,
        false,
      );
    tf.dispose([x, w, head]);
  });

  it("takes a Variable's new values after assign, and frees a copy once its tensor is gone", () => {
    const [K, N] = [40, 12];
    const x = tf.randomNormal([10, K], 0, 1, 'float32', 21) as tf.Tensor2D;
    const bias = tf.zeros([N]) as tf.Tensor1D;
    const initial = tf.randomNormal([K, N], 0, 1, 'float32', 22);
    const w = tf.variable(initial) as tf.Variable<tf.Rank.R2>;
    initial.dispose();
    decode(x, w, bias); // (which also frees what earlier tests left behind)
    const held = packedWeightsHeld();
    const before = decode(x, w, bias);
    expect(packedWeightsHeld()).toBe(held + 1);
    const next = tf.randomNormal([K, N], 0, 1, 'float32', 23) as tf.Tensor2D;
    w.assign(next);
    const after = decode(x, w, bias);
    expect(after).not.toEqual(before);
    const [xs, ns] = [x.dataSync(), next.dataSync()];
    for (let i = 0; i < 10; i++) {
      for (let n = 0; n < N; n++) {
        let sum = 0;
        for (let k = 0; k < K; k++) sum += xs[i * K + k]! * ns[k * N + n]!;
        expect(after[i * N + n]).toBeCloseTo(sum, 4);
      }
    }
    // The copy of the first values went at that lookup (the backend had freed them).
    expect(packedWeightsHeld()).toBe(held);
    decode(x, w, bias);
    expect(packedWeightsHeld()).toBe(held + 1);
    w.dispose();
    next.dispose();
    // Any later small matmul looks the cache over.
    const other = tf.randomNormal([K, N], 0, 1, 'float32', 24) as tf.Tensor2D;
    decode(x, other, bias);
    expect(packedWeightsHeld()).toBe(held);
    tf.dispose([x, bias, other]);
  });
});

describe("the relaxed-SIMD module's tf.exp", () => {
  it('is within 2 float32 ulps of e^x over [-87, 88], for any size (4 lanes at a time, then the rest)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 203 }),
        fc.constantFrom(1, 10, 87),
        fc.integer({ min: 1, max: 1_000_000 }),
        (n, spread, seed) => {
          tf.tidy(() => {
            const x = tf.clipByValue(tf.randomNormal([n], 0, spread, 'float32', seed), -87, 88);
            const have = tf.exp(x).dataSync();
            x.dataSync().forEach((v, i) => {
              const want = Math.exp(v);
              expect(Math.abs(have[i]! - want) / want).toBeLessThan(2.5e-7);
            });
          });
        },
      ),
      { numRuns: 40 },
    );
  });

  it("hands tensors with values outside [-87, 88] (or NaN) to tfjs's own Exp, whole", async () => {
    const inputs = [
      [-100, 0.5, -1],
      [89, 1, 2, 3, 4],
      [NaN, 0],
      [-87, 88, 0, -1e-30, ...Array.from({ length: 1000 }, (_, i) => Math.sin(i) * 20)],
    ];
    const run = () => inputs.map((values) => tf.tidy(() => [...tf.exp(tf.tensor1d(values)).dataSync()]));
    const withKernel = run();
    uninstallGemmKernel();
    const stock = run();
    await installGemmKernel(version_wasm);
    for (let i = 0; i < 3; i++) expect(withKernel[i]).toEqual(stock[i]);
    // All in range: the kernel's own values (its rounding is not libm's), within 2 ulps of the stock ones.
    expect(withKernel[3]).not.toEqual(stock[3]);
    withKernel[3]!.forEach((v, i) =>
      expect(Math.abs(v - stock[3]![i]!) / stock[3]![i]!).toBeLessThan(2.5e-7),
    );
  });
});

describe('causal attention on the q/k/v projection as it lies', () => {
  it('gives what the split q, k, v give, and its gradient what theirs concatenated give, bit for bit', () => {
    fc.assert(
      fc.property(
        fc.record({
          B: fc.integer({ min: 1, max: 3 }),
          T: fc.integer({ min: 1, max: 40 }),
          H: fc.integer({ min: 1, max: 3 }),
          hd: fc.constantFrom(4, 8, 16),
          seed: fc.integer({ min: 1, max: 1_000_000 }),
        }),
        ({ B, T, H, hd, seed }) => {
          tf.tidy(() => {
            const heads = { B, T, H };
            const scale = 1 / Math.sqrt(hd);
            const qkv = tf.randomNormal([B * T, 3 * H * hd], 0, 1, 'float32', seed) as tf.Tensor2D;
            const dy = tf.randomNormal([B * T, H * hd], 0, 1, 'float32', seed + 1) as tf.Tensor2D;
            const [q, k, v] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
            const [y, p] = causalAttentionQkv(qkv, heads, scale);
            const [ySplit, pSplit] = causalAttention(q, k, v, heads, scale);
            expect(y.dataSync()).toEqual(ySplit.dataSync());
            const grad = causalAttentionQkvGrad(dy, qkv, p, heads, scale);
            const want = tf.concat(causalAttentionGrad(dy, q, k, v, pSplit, heads, scale), 1);
            expect(grad.shape).toEqual([B * T, 3 * H * hd]);
            expect(grad.dataSync()).toEqual(want.dataSync());
          });
        },
      ),
      { numRuns: 30 },
    );
  });

  it('says what is wrong with its inputs, and that it needs the relaxed-SIMD kernels', async () => {
    tf.tidy(() => {
      const qkv = tf.ones([6, 18]) as tf.Tensor2D;
      expect(() => causalAttentionQkv(qkv, { B: 2, T: 3, H: 4 }, 1)).toThrow(
        /causalAttentionQkv: qkv must be float32 \[6, 3 \* 4 heads \* head size\], got float32 \[6, 18\]/,
      );
      const [, p] = causalAttentionQkv(qkv, { B: 2, T: 3, H: 2 }, 1);
      expect(() => causalAttentionQkvGrad(tf.ones([6, 5]), qkv, p, { B: 2, T: 3, H: 2 }, 1)).toThrow(
        /causalAttentionQkvGrad: dy must be float32 \[6, 6\], got float32 \[6, 5\]/,
      );
    });
    uninstallGemmKernel();
    const qkv = tf.ones([6, 18]) as tf.Tensor2D;
    expect(() => causalAttentionQkv(qkv, { B: 2, T: 3, H: 2 }, 1)).toThrow(
      /rxrl's relaxed-SIMD kernels are not installed/,
    );
    qkv.dispose();
    await installGemmKernel(version_wasm);
  });
});
