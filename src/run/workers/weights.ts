import type { GPT } from '../../policy/gpt.ts';

/** A model's weights by parameter name as plain arrays: what crosses a thread or process boundary. */
export type WeightArrays = Record<string, Float32Array>;

export function exportWeights(model: GPT): WeightArrays {
  const out: WeightArrays = {};
  // slice(): a copy with a buffer of its own. dataSync may return a view into a larger buffer (the
  // wasm heap); transferring that buffer would detach the backend's memory.
  for (const [name, v] of model.params) out[name] = (v.dataSync() as Float32Array).slice();
  return out;
}

export function importWeights(model: GPT, weights: WeightArrays): void {
  model.assignWeights(new Map(Object.entries(weights)));
}

/** The buffers to transfer (not copy) with a postMessage. */
export function buffersOf(weights: WeightArrays): ArrayBuffer[] {
  return Object.values(weights).map((a) => a.buffer as ArrayBuffer);
}
