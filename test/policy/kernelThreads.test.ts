import * as tf from '@tensorflow/tfjs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import wabtInit from 'wabt';
import { DEFAULT_GRPO_LOSS } from '../../src/grpo/loss.ts';
import { Learner } from '../../src/learner/learner.ts';
import { setBackendThreads } from '../../src/policy/backend.ts';
import {
  causalAttentionQkv,
  causalAttentionQkvGrad,
  matmulThreads,
  setMatmulThreads,
  THREADED_WORK,
} from '../../src/policy/gemmKernel.ts';
import {
  freeUnlessStuck,
  HelperStuckError,
  KernelHelpers,
  runCut,
  type HelperCall,
} from '../../src/policy/kernelThreads.ts';
import { SHARED_HEAP_MAX_PAGES, type SharedMemory } from '../../src/policy/sharedHeap.ts';
import { GPT } from '../../src/policy/gpt.ts';
import {
  adamwStep,
  columnSum,
  gelu,
  geluGrad,
  layerNormGrad,
  layerNormRows,
} from '../../src/policy/simdKernels.ts';
import { learnerBatch } from '../../bench/common.ts';
import { useWasm } from './helpers.ts';

beforeAll(useWasm);

afterAll(() => setMatmulThreads(1));

interface Case {
  M: number;
  N: number;
  K: number;
  transposeA: boolean;
  transposeB: boolean;
  bias: boolean;
  seed: number;
}

/** Runs `compute` with the kernels on `threads` threads; returns what it returned and how many kernel calls were cut. */
async function onThreads<T>(threads: number, compute: () => T): Promise<{ values: T; shared: number }> {
  await setMatmulThreads(threads);
  const before = matmulThreads().callsCut;
  const values = compute();
  return { values, shared: matmulThreads().callsCut - before };
}

/** Runs the product on `threads` threads; returns C and how many products the helpers shared in. */
function product(c: Case, threads: number): Promise<{ values: Float32Array; shared: number }> {
  return onThreads(threads, () =>
    tf.tidy(() => {
      const a = tf.randomNormal(c.transposeA ? [c.K, c.M] : [c.M, c.K], 0, 1, 'float32', c.seed);
      const b = tf.randomNormal(c.transposeB ? [c.N, c.K] : [c.K, c.N], 0, 1, 'float32', c.seed + 1);
      const bias = c.bias ? tf.randomNormal([c.N], 0, 1, 'float32', c.seed + 2) : undefined;
      const out = bias
        ? tf.fused.matMul({ a, b, transposeA: c.transposeA, transposeB: c.transposeB, bias })
        : tf.matMul(a, b, c.transposeA, c.transposeB);
      return out.dataSync() as Float32Array;
    }),
  );
}

// Sizes on both sides of M = N (split by rows or by columns), not multiples of the split's 6 rows or
// 8 columns, with K large enough that the product is split.
const arbitraryCase: fc.Arbitrary<Case> = fc
  .record({
    M: fc.integer({ min: 64, max: 420 }),
    N: fc.integer({ min: 17, max: 420 }),
    extraK: fc.integer({ min: 0, max: 300 }),
    transposeA: fc.boolean(),
    transposeB: fc.boolean(),
    bias: fc.boolean(),
    seed: fc.integer({ min: 1, max: 1000 }),
  })
  .map(({ extraK, ...c }) => ({ ...c, K: Math.ceil(THREADED_WORK / (c.M * c.N)) + extraK }));

/** One helper thread running the module `wat` in place of the kernels, on a shared memory of its own. */
async function helpersRunning(wat: string, timeoutMs?: number): Promise<KernelHelpers> {
  const wabt = await wabtInit();
  const parsed = wabt.parseWat('helper.wat', wat, { threads: true });
  const { Module, Memory } = (
    globalThis as unknown as {
      WebAssembly: {
        Module: new (bytes: Uint8Array) => object;
        Memory: new (d: { initial: number; maximum: number; shared: boolean }) => SharedMemory;
      };
    }
  ).WebAssembly;
  try {
    const memory = new Memory({ initial: 1, maximum: SHARED_HEAP_MAX_PAGES, shared: true });
    return new KernelHelpers(
      [{ module: new Module(parsed.toBinary({}).buffer), exports: ['gemm'] }],
      memory,
      1,
      timeoutMs,
    );
  } finally {
    parsed.destroy();
  }
}

/** A call of the gemm export (its 17 arguments; the stand-in modules below do not read them). */
const GEMM_CALL: HelperCall = { fn: 'gemm', args: Array.from({ length: 17 }, () => 0) };

describe('the matmul on helper threads', () => {
  it('gives the same floats as one thread, bit for bit, split by rows or columns, transposed or not, with a bias or not', async () => {
    await fc.assert(
      fc.asyncProperty(arbitraryCase, async (c) => {
        const one = await product(c, 1);
        const two = await product(c, 2);
        expect(one.shared).toBe(0);
        expect(two.shared).toBe(1);
        expect(two.values).toEqual(one.values);
      }),
      { numRuns: 12, seed: 7 },
    );
  });

  it('with two helpers too', async () => {
    for (const c of [
      { M: 700, N: 300, K: 90, transposeA: true, transposeB: false, bias: true, seed: 3 },
      { M: 150, N: 640, K: 200, transposeA: false, transposeB: true, bias: false, seed: 4 },
    ]) {
      const one = await product(c, 1);
      const three = await product(c, 3);
      expect(three.shared).toBe(1);
      expect(three.values).toEqual(one.values);
    }
  });

  it('leaves small products on the calling thread', async () => {
    const small = await product(
      { M: 64, N: 64, K: 64, transposeA: false, transposeB: false, bias: false, seed: 5 },
      2,
    );
    expect(small.shared).toBe(0);
  });

  it('trains a learner step to the same weights and reports as one thread', async () => {
    const shape = { vocabSize: 40, contextLength: 80, dModel: 128, nLayers: 2, nHeads: 4, seed: 11 };
    const batch = learnerBatch({ rows: 8, length: 64, promptLength: 8, vocab: 40 });
    const step = async (threads: number) => {
      const { values, shared } = await onThreads(threads, () => {
        const model = new GPT(shape);
        const learner = new Learner(model, {
          loss: DEFAULT_GRPO_LOSS,
          learningRate: { peak: 1e-3 },
          maxGradNorm: 1,
        });
        const reports = learner.train(batch).map(({ loss, gradNorm }) => ({ loss, gradNorm }));
        const weights = [...model.params.values()].map((p) => p.dataSync().slice());
        learner.dispose();
        model.dispose();
        return { reports, weights };
      });
      return { ...values, shared };
    };
    const one = await step(1);
    const two = await step(2);
    expect(two.shared).toBeGreaterThan(10);
    expect(two.reports).toEqual(one.reports);
    expect(two.weights).toEqual(one.weights);
  });

  it('cuts causal attention along its sequences, forward and gradient, bit for bit', async () => {
    // B H T^2 hd = 2^23 multiply-adds per product of scores: just enough to be cut.
    const [B, T, H, hd] = [8, 64, 4, 64];
    expect(B * H * T * T * hd).toBeGreaterThanOrEqual(THREADED_WORK);
    const run = (threads: number) =>
      onThreads(threads, () =>
        tf.tidy(() => {
          const qkv = tf.randomNormal([B * T, 3 * H * hd], 0, 1, 'float32', 21) as tf.Tensor2D;
          const dy = tf.randomNormal([B * T, H * hd], 0, 1, 'float32', 22);
          const [y, p] = causalAttentionQkv(qkv, { B, T, H }, 0.125);
          const dqkv = causalAttentionQkvGrad(dy, qkv, p, { B, T, H }, 0.125);
          // P is set for keys up to each query only (the rest is whatever the heap held): compare those.
          const causal = (p.dataSync() as Float32Array).filter((_, at) => at % T <= Math.floor(at / T) % T);
          return [y.dataSync() as Float32Array, causal, dqkv.dataSync() as Float32Array];
        }),
      );
    const one = await run(1);
    const two = await run(2);
    expect(one.shared).toBe(0);
    expect(two.shared).toBe(2);
    expect(two.values).toEqual(one.values);
    // Every sequence's output is there: the helper's half is not left at zero.
    expect(two.values[0]!.subarray((B / 2) * T * H * hd).some((v) => v !== 0)).toBe(true);
  });

  it('cuts GELU along its elements, bit for bit, and leaves small ones whole', async () => {
    const run = (threads: number, n: number) =>
      onThreads(threads, () =>
        tf.tidy(() =>
          gelu(tf.randomNormal([n / 512, 512], 0, 2, 'float32', 31)).map((t) => t.dataSync() as Float32Array),
        ),
      );
    const n = 300 * 512;
    const one = await run(1, n);
    const two = await run(2, n);
    expect(two.shared).toBe(1);
    expect(two.values).toEqual(one.values);
    expect((await run(2, 64 * 512)).shared).toBe(0);
  });

  it('cuts LayerNorm and its gradient (rows, then columns), column sums (columns), the GELU gradient and AdamW (elements), bit for bit', async () => {
    // Each above THREADED_ELEMENTS, with sizes that do not fall evenly into the cuts' units.
    const run = (threads: number) =>
      onThreads(threads, () =>
        tf.tidy(() => {
          const x = tf.randomNormal([516, 388], 0, 3, 'float32', 41) as tf.Tensor2D;
          const [p, g, m] = [42, 43, 44].map((seed) => tf.randomNormal([403, 389], 0, 1, 'float32', seed));
          const v = tf.abs(tf.randomNormal([403, 389], 0, 1, 'float32', 45));
          const [gain, bias] = [46, 47].map((seed) => tf.randomNormal([388], 0, 1, 'float32', seed));
          const [, s] = gelu(x);
          const [y, xhat, rstd] = layerNormRows(x, gain!, bias!, 1e-5);
          const outs = [
            y,
            xhat,
            rstd,
            ...layerNormGrad(tf.sin(x), xhat, rstd, gain!),
            columnSum(x),
            geluGrad(tf.onesLike(x), x, s!),
            ...adamwStep(p!, g!, m!, v, {
              gradScale: 0.5,
              beta1: 0.9,
              beta2: 0.95,
              learningRate: 1e-3,
              epsilon: 1e-8,
              weightDecay: 0.1,
              c1: 0.1,
              c2: 0.05,
            }),
          ];
          return outs.map((t) => t.dataSync() as Float32Array);
        }),
      );
    const one = await run(1);
    const two = await run(2);
    expect(one.shared).toBe(0);
    // gelu, layerNorm, layerNormGrad (rows, then its sums by columns), columnSum, geluGrad, adamw.
    expect(two.shared).toBe(7);
    expect(two.values).toEqual(one.values);
  });

  it('reports a helper that fails, naming the thread and its error, after the caller has done its part', async () => {
    // A module whose gemm traps stands in for a kernel bug.
    const params = Array.from({ length: 17 }, () => '(param i32)').join(' ');
    const helpers = await helpersRunning(
      `(module (import "env" "memory" (memory 1 65536 shared)) (func (export "gemm") ${params} unreachable))`,
    );
    let ownParts = 0;
    const own = (): void => void ownParts++;
    expect(() => helpers.run([GEMM_CALL], own)).toThrow(
      'kernel helper thread 1 failed: RuntimeError: unreachable',
    );
    expect(ownParts).toBe(1);
    // It stays failed: the next call says so before it starts.
    expect(() => helpers.run([GEMM_CALL], own)).toThrow('kernel helper thread 1 failed');
    expect(ownParts).toBe(1);
    expect(helpers.broken).toBe(true);
    await helpers.close();
  });

  it('reports a helper that does not finish in time as stuck, and is not used again', async () => {
    // A gemm that never returns stands in for a hung kernel.
    const params = Array.from({ length: 17 }, () => '(param i32)').join(' ');
    const helpers = await helpersRunning(
      `(module (import "env" "memory" (memory 1 65536 shared)) (func (export "gemm") ${params} (loop (br 0))))`,
      300,
    );
    let ownParts = 0;
    const own = (): void => void ownParts++;
    let error: unknown;
    try {
      helpers.run([GEMM_CALL], own);
    } catch (e) {
      error = e;
    }
    // A HelperStuckError: the kernels then leave what it may still write allocated.
    expect(error).toBeInstanceOf(HelperStuckError);
    expect(String(error)).toContain('kernel helper thread 1 did not finish its part within 0.3 s');
    expect(ownParts).toBe(1);
    const freed: string[] = [];
    freeUnlessStuck(error, ['out', 'scratch'], (t) => freed.push(t));
    expect(freed).toEqual([]);
    freeUnlessStuck(new Error('a trap'), ['out'], (t) => freed.push(t));
    expect(freed).toEqual(['out']);
    expect(helpers.broken).toBe(true);
    expect(() => helpers.run([GEMM_CALL], own)).toThrow(
      'setMatmulThreads (or setBackendThreads) starts new helpers',
    );
    expect(ownParts).toBe(1);
    await helpers.close();
  });

  it('runs on this thread alone a kernel whose module the helpers were not started with', async () => {
    const params = Array.from({ length: 17 }, () => '(param i32)').join(' ');
    const helpers = await helpersRunning(
      `(module (import "env" "memory" (memory 1 65536 shared)) (func (export "gemm") ${params}))`,
    );
    const here: number[][] = [];
    // This thread's instance of the module: it records the calls made here.
    const exports = {
      layerNorm: (...args: number[]) => void here.push(args),
      gemm: (...args: number[]) => void here.push(args.slice(0, 2)),
    };
    expect(runCut(helpers, exports, 'layerNorm', 1000, 1, (start, end) => [start, end])).toBe(false);
    expect(here).toEqual([[0, 1000]]);
    // Its own export is cut: the first part here, the other on the helper.
    expect(
      runCut(helpers, exports, 'gemm', 1000, 1, (start, end) => [
        start,
        end,
        ...Array.from({ length: 15 }, () => 0),
      ]),
    ).toBe(true);
    expect(here[1]).toEqual([0, 500]);
    expect(helpers.shared).toBe(1);
    await helpers.close();
  });

  it('reports a helper that could not start (not as a helper that never answered)', async () => {
    // A module that imports what the helper does not give: instantiating it throws a LinkError.
    const helpers = await helpersRunning('(module (import "env" "missing" (func)))');
    expect(() => helpers.run([GEMM_CALL], () => undefined)).toThrow(
      /kernel helper thread 1 failed: LinkError/,
    );
    expect(helpers.broken).toBe(true);
    await helpers.close();
  });

  it('rejects a thread count that is not a whole number >= 1, naming it', async () => {
    await expect(setMatmulThreads(0)).rejects.toThrow('matmul threads must be a whole number >= 1, got 0');
    await expect(setBackendThreads(1.5)).rejects.toThrow('threads must be a whole number >= 1, got 1.5');
  });

  it('reports the count in effect: the wasm backend takes it', async () => {
    expect(await setBackendThreads(2)).toBe(2);
    expect(matmulThreads().count).toBe(2);
    expect(await setBackendThreads(1)).toBe(1);
    expect(matmulThreads().count).toBe(1);
  });
});
