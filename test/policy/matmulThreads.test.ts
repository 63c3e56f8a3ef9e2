import * as tf from '@tensorflow/tfjs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import wabtInit from 'wabt';
import { DEFAULT_GRPO_LOSS } from '../../src/grpo/loss.ts';
import { Learner } from '../../src/learner/learner.ts';
import { setBackendThreads } from '../../src/policy/backend.ts';
import { GEMM_BLOCKS, matmulThreads, setMatmulThreads, THREADED_WORK } from '../../src/policy/gemmKernel.ts';
import { MatmulHelpers } from '../../src/policy/matmulThreads.ts';
import { GPT } from '../../src/policy/gpt.ts';
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

/** Runs the product on `threads` threads; returns C and how many products the helpers shared in. */
async function product(c: Case, threads: number): Promise<{ values: Float32Array; shared: number }> {
  await setMatmulThreads(threads);
  const before = matmulThreads().productsShared;
  const values = tf.tidy(() => {
    const a = tf.randomNormal(c.transposeA ? [c.K, c.M] : [c.M, c.K], 0, 1, 'float32', c.seed);
    const b = tf.randomNormal(c.transposeB ? [c.N, c.K] : [c.K, c.N], 0, 1, 'float32', c.seed + 1);
    const bias = c.bias ? tf.randomNormal([c.N], 0, 1, 'float32', c.seed + 2) : undefined;
    const out = bias
      ? tf.fused.matMul({ a, b, transposeA: c.transposeA, transposeB: c.transposeB, bias })
      : tf.matMul(a, b, c.transposeA, c.transposeB);
    return out.dataSync() as Float32Array;
  });
  return { values, shared: matmulThreads().productsShared - before };
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

/** One helper thread running the module `wat` in place of the kernels. */
async function helpersRunning(wat: string): Promise<MatmulHelpers> {
  const wabt = await wabtInit();
  const parsed = wabt.parseWat('helper.wat', wat, { threads: true });
  const { Module } = (globalThis as unknown as { WebAssembly: { Module: new (bytes: Uint8Array) => object } })
    .WebAssembly;
  try {
    return new MatmulHelpers(new Module(parsed.toBinary({}).buffer), 1, GEMM_BLOCKS);
  } finally {
    parsed.destroy();
  }
}

/** A 64 x 64 x 64 product on a 1 MiB heap: A at 0, B at 64 KiB, C at 128 KiB. */
const SMALL = {
  a: 0,
  aRow: 256,
  aCol: 4,
  b: 1 << 16,
  bRow: 256,
  bCol: 4,
  bias: undefined,
  c: 1 << 17,
  M: 64,
  N: 64,
  K: 64,
};

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

  it('with two helpers too (one copy of the operand they share)', async () => {
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
      await setMatmulThreads(threads);
      const before = matmulThreads().productsShared;
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
      return { reports, weights, shared: matmulThreads().productsShared - before };
    };
    const one = await step(1);
    const two = await step(2);
    expect(two.shared).toBeGreaterThan(10);
    expect(two.reports).toEqual(one.reports);
    expect(two.weights).toEqual(one.weights);
  });

  it('reports a helper that fails, naming the thread and its error, after the caller has done its part', async () => {
    // A module whose gemm traps stands in for a kernel bug.
    const params = Array.from({ length: 16 }, () => '(param i32)').join(' ');
    const helpers = await helpersRunning(
      `(module (import "env" "memory" (memory 1 65536 shared)) (func (export "gemm") ${params} unreachable))`,
    );
    const heap = new ArrayBuffer(1 << 20);
    let ownParts = 0;
    const own = (): void => void ownParts++;
    expect(() => helpers.multiply(heap, SMALL, own)).toThrow(
      'matmul helper thread 1 failed: RuntimeError: unreachable',
    );
    expect(ownParts).toBe(1);
    // It stays failed: the next product says so before it starts.
    expect(() => helpers.multiply(heap, SMALL, own)).toThrow('matmul helper thread 1 failed');
    expect(ownParts).toBe(1);
    expect(helpers.broken).toBe(true);
    await helpers.close();
  });

  it('reports a helper that could not start (not as a helper that never answered)', async () => {
    // A module that imports what the helper does not give: instantiating it throws a LinkError.
    const helpers = await helpersRunning('(module (import "env" "missing" (func)))');
    expect(() => helpers.multiply(new ArrayBuffer(1 << 20), SMALL, () => undefined)).toThrow(
      /matmul helper thread 1 failed: LinkError/,
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
