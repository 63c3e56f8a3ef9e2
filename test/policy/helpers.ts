import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../../src/policy/backend.ts';
import { GPT } from '../../src/policy/gpt.ts';

/** Every policy test runs on the wasm backend, the one used on CPU machines. */
export const useWasm = (): Promise<unknown> => selectBackend('wasm');

export const TINY = { vocabSize: 24, contextLength: 32, dModel: 32, nLayers: 2, nHeads: 4, seed: 1 } as const;

/**
 * A tiny model; `sharpness` scales the output head so next-token distributions are peaked rather
 * than near-uniform (a fresh model's), which makes truncation and greedy tests meaningful.
 */
export function tinyModel(seed = 1, sharpness = 1, positionEncoding: 'learned' | 'rope' = 'learned'): GPT {
  const model = new GPT({ ...TINY, seed, positionEncoding });
  if (sharpness !== 1) {
    const head = model.params.get('head')!;
    tf.tidy(() => head.assign(tf.mul(head, sharpness)));
  }
  return model;
}

/** Next-token log-probs [t][v] at the given temperature for every position of one sequence. */
export function distributions(model: GPT, sequence: readonly number[], temperature = 1): number[][] {
  return tf.tidy(() => {
    const ids = tf.tensor2d([[...sequence]], undefined, 'int32');
    return (model.nextTokenLogProbs(ids, temperature).arraySync() as number[][][])[0]!;
  });
}

export const PROMPTS: number[][] = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13], [14, 15, 3, 16, 17]];
