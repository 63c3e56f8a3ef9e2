import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { selectBackend } from '../../src/policy/backend.ts';

const installed = (pkg: string): boolean => {
  try {
    createRequire(import.meta.url).resolve(pkg);
    return true;
  } catch {
    return false;
  }
};

describe('selectBackend', () => {
  it('sets up wasm and is idempotent', async () => {
    expect(await selectBackend('wasm')).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    expect(await selectBackend('wasm')).toBe('wasm');
    expect(await selectBackend('auto')).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    expect(tf.sum(tf.tensor1d([1, 2, 3])).dataSync()[0]).toBe(6);
  });

  // These two need the package missing; where it is installed they are skipped, and say why.
  for (const pkg of ['@tensorflow/tfjs-node', '@tensorflow/tfjs-node-gpu'])
    if (installed(pkg)) console.warn(`skipping the missing-${pkg} test: ${pkg} is installed here`);

  it.skipIf(installed('@tensorflow/tfjs-node'))(
    'refuses a missing native backend and says how to install it',
    async () => {
      await expect(selectBackend('tensorflow')).rejects.toThrow(/npm install @tensorflow\/tfjs-node@/);
      expect(tf.getBackend()).toBe('wasm');
    },
  );

  it.skipIf(installed('@tensorflow/tfjs-node-gpu'))(
    'refuses a missing GPU backend with no fallback',
    async () => {
      await expect(selectBackend('tensorflow-gpu')).rejects.toThrow(/tfjs-node-gpu is not installed/);
      expect(tf.getBackend()).toBe('wasm');
    },
  );

  it('refuses a backend it does not know, naming the choices, instead of running on another', async () => {
    await expect(selectBackend('tensorflow2' as never)).rejects.toThrow(
      "unknown backend 'tensorflow2': choose one of auto, tensorflow-gpu, tensorflow, wasm, cpu",
    );
    expect(tf.getBackend()).toBe('wasm');
  });
});
