import * as tf from '@tensorflow/tfjs';
import { version_wasm } from '@tensorflow/tfjs-backend-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdamW } from '../../src/learner/adamw.ts';
import {
  installSimdKernels,
  simdKernelsAvailable,
  uninstallSimdKernels,
} from '../../src/policy/simdKernels.ts';
import { useWasm } from '../policy/helpers.ts';

beforeAll(async () => {
  await useWasm();
});

afterAll(async () => {
  await installSimdKernels(version_wasm);
});

/** Parameters of a matrix (decayed), a vector (not), and a size that is not a multiple of 4. */
const SHAPES: Record<string, number[]> = { w: [6, 8], b: [8], odd: [3, 5] };

let run = 0;

/** Three AdamW steps on fresh parameters; their values and the moments after. */
function threeSteps(): Record<string, number[]> {
  const params = new Map(
    Object.entries(SHAPES).map(([name, shape], i) => [
      name,
      tf.tidy(() =>
        tf.variable(
          tf.randomNormal(shape, 0, 1, 'float32', 10 + i),
          true,
          `adamw-test-${name}-${i}-${run++}`,
        ),
      ),
    ]),
  );
  const optimizer = new AdamW(params, { weightDecay: 0.1 });
  for (let step = 0; step < 3; step++) {
    const grads = Object.fromEntries(
      Object.entries(SHAPES).map(([name, shape], i) => [
        name,
        tf.randomNormal(shape, 0, 1, 'float32', 100 * step + i + 1),
      ]),
    );
    optimizer.apply(grads, 0.01 * (step + 1), step === 1 ? 0.37 : 1);
    tf.dispose(Object.values(grads));
  }
  const out: Record<string, number[]> = {};
  for (const [name, p] of params) out[name] = [...p.dataSync()];
  const state = optimizer.state();
  for (const [name, t] of state) out[name] = [...t.dataSync()];
  state.get('adam.t')!.dispose();
  optimizer.dispose();
  for (const p of params.values()) p.dispose();
  return out;
}

describe('AdamW', () => {
  it("takes the same values, bit for bit, in rxrl's one-pass kernel as in tfjs ops (decay, clipping factor, odd sizes)", async () => {
    uninstallSimdKernels();
    expect(simdKernelsAvailable(4)).toBe(false);
    const ops = threeSteps();
    expect(await installSimdKernels(version_wasm)).toBe(true);
    const before = tf.memory().numTensors;
    const fused = threeSteps();
    expect(tf.memory().numTensors).toBe(before);
    expect(Object.keys(fused).sort()).toEqual(Object.keys(ops).sort());
    for (const name of Object.keys(ops)) expect(fused[name], name).toEqual(ops[name]);
    // The update moved every parameter (a kernel that wrote nothing would leave them as they were).
    const initial = tf.tidy(() => [...tf.randomNormal(SHAPES.w!, 0, 1, 'float32', 10).dataSync()]);
    fused.w!.forEach((x, i) => expect(x).not.toBe(initial[i]));
  });
});
