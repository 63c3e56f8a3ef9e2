import * as tf from '@tensorflow/tfjs';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../../src/policy/backend.ts';
import {
  installWasmKernels,
  uninstallWasmKernels,
  wasmKernelsInstalled,
} from '../../src/policy/wasmKernels.ts';
import { version_wasm } from '@tensorflow/tfjs-backend-wasm';

/** Runs f with the stock wasm kernels, then with rxrl's, and returns both results as arrays. */
function stockAndFast(f: () => tf.Tensor): [Float32Array, Float32Array, number[]] {
  uninstallWasmKernels();
  const stock = tf.tidy(f);
  expect(installWasmKernels(version_wasm)).toBe(true);
  const fast = tf.tidy(f);
  expect(fast.shape).toEqual(stock.shape);
  const out: [Float32Array, Float32Array, number[]] = [
    stock.dataSync() as Float32Array,
    fast.dataSync() as Float32Array,
    stock.shape,
  ];
  tf.dispose([stock, fast]);
  return out;
}

function expectClose(a: Float32Array, b: Float32Array): void {
  expect(b.length).toBe(a.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (1 + Math.abs(a[i]!)));
  expect(worst).toBeLessThan(1e-5);
}

describe('wasm kernels (BatchMatMul on XNNPACK per batch entry, Slice, SplitV and Identity without copies)', () => {
  beforeAll(async () => {
    expect(await selectBackend('wasm')).toBe('wasm');
  });

  it('are installed by selectBackend', () => {
    expect(wasmKernelsInstalled()).toBe(true);
  });

  it('batched matmuls with and without transpose flags equal the stock kernel', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 0, maxLength: 2 }),
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 9 }),
        fc.boolean(),
        fc.boolean(),
        fc.integer({ min: 1, max: 1_000_000 }),
        (batch, M, K, N, tA, tB, seed) => {
          const aShape = [...batch, ...(tA ? [K, M] : [M, K])];
          const bShape = [...batch, ...(tB ? [N, K] : [K, N])];
          const [stock, fast] = stockAndFast(() =>
            tf.matMul(
              tf.randomNormal(aShape, 0, 1, 'float32', seed),
              tf.randomNormal(bShape, 0, 1, 'float32', seed + 1),
              tA,
              tB,
            ),
          );
          expectClose(stock, fast);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('gradients through attention-shaped matmuls equal the stock kernel', () => {
    const q = tf.randomNormal([2, 3, 7, 4], 0, 1, 'float32', 1);
    const k = tf.randomNormal([2, 3, 7, 4], 0, 1, 'float32', 2);
    const v = tf.randomNormal([2, 3, 7, 4], 0, 1, 'float32', 3);
    const grads = (): tf.Tensor =>
      tf.concat(
        tf
          .grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
            tf.sum(tf.square(tf.matMul(tf.softmax(tf.matMul(a, b, false, true)), c))),
          )([q, k, v])
          .map((g) => tf.reshape(g, [-1])),
      );
    const [stock, fast] = stockAndFast(grads);
    expectClose(stock, fast);
    tf.dispose([q, k, v]);
  });

  it('slices of every rank and position equal the stock kernel', () => {
    fc.assert(
      fc.property(
        fc
          .array(fc.integer({ min: 1, max: 5 }), { minLength: 1, maxLength: 5 })
          .chain((shape) =>
            fc.tuple(
              fc.constant(shape),
              fc.tuple(...shape.map((s) => fc.integer({ min: 0, max: s - 1 }))),
              fc.tuple(...shape.map((s) => fc.integer({ min: 1, max: s }))),
              fc.constantFrom('float32', 'int32') as fc.Arbitrary<'float32' | 'int32'>,
            ),
          ),
        ([shape, begin, size, dtype]) => {
          const clipped = size.map((s, d) => Math.min(s, shape[d]! - begin[d]!));
          const n = shape.reduce((a, b) => a * b, 1);
          const [stock, fast] = stockAndFast(() =>
            tf.slice(
              tf.tensor(
                Array.from({ length: n }, (_, i) => i),
                shape,
                dtype,
              ),
              begin,
              clipped,
            ),
          );
          expect(Array.from(fast)).toEqual(Array.from(stock));
        },
      ),
      { numRuns: 100 },
    );
  });

  it('splits into equal or given sizes along any axis equal the stock kernel', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 4 }).chain((shape) =>
          fc.tuple(fc.constant(shape), fc.integer({ min: 0, max: shape.length - 1 })).chain(([s, axis]) =>
            fc.tuple(
              fc.constant(s),
              fc.constant(axis),
              // Either a count that divides the axis, or explicit sizes summing to it.
              fc.oneof(
                fc.constantFrom(...[1, 2, 3, 6].filter((n) => s[axis]! % n === 0)),
                fc
                  .array(fc.integer({ min: 1, max: s[axis]! }), { minLength: 1, maxLength: 3 })
                  .map((sizes) => {
                    const head = sizes.slice(0, -1).reduce((a, b) => a + b, 0);
                    return head < s[axis]! ? [...sizes.slice(0, -1), s[axis]! - head] : [s[axis]!];
                  }),
              ),
            ),
          ),
        ),
        ([shape, axis, split]) => {
          const n = shape.reduce((a, b) => a * b, 1);
          const x = () =>
            tf.tensor(
              Array.from({ length: n }, (_, i) => i),
              shape,
            );
          const pieces = () => tf.split(x(), split, axis);
          const [stock, fast] = stockAndFast(() => tf.concat(pieces().map((p) => p.flatten())));
          expect(Array.from(fast)).toEqual(Array.from(stock));
          const shapes = tf.tidy(() => pieces().map((p) => p.shape));
          uninstallWasmKernels();
          const stockShapes = tf.tidy(() => pieces().map((p) => p.shape));
          installWasmKernels(version_wasm);
          expect(shapes).toEqual(stockShapes);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('a clone shares memory but outlives its source, and variables stay independent', () => {
    const x = tf.tensor1d([1, 2, 3]);
    const y = tf.clone(x);
    x.dispose();
    expect(Array.from(y.dataSync())).toEqual([1, 2, 3]);
    const v = tf.variable(y);
    v.assign(tf.tensor1d([4, 5, 6]));
    expect(Array.from(y.dataSync())).toEqual([1, 2, 3]);
    expect(Array.from(v.dataSync())).toEqual([4, 5, 6]);
    tf.dispose([y, v]);
  });

  it('leave no tensors or XNNPACK views behind', () => {
    const before = tf.memory().numTensors;
    const a = tf.randomNormal([4, 8, 8]);
    for (let i = 0; i < 20; i++) tf.tidy(() => tf.matMul(a, a, true, false).dataSync());
    a.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
