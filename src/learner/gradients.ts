import * as tf from '@tensorflow/tfjs';
import type { GPT } from '../policy/gpt.ts';

/**
 * Loss and gradients by the model's parameter names: tf.variableGrads keys gradients by tfjs
 * variable name, the optimiser and checkpoints know parameters by model name.
 */
export function lossAndGradients(
  model: GPT,
  loss: () => tf.Scalar,
): { value: tf.Scalar; grads: tf.NamedTensorMap } {
  const { value, grads: byVariable } = tf.variableGrads(loss, model.variables());
  const grads: tf.NamedTensorMap = {};
  for (const [name, variable] of model.params) {
    const g = byVariable[variable.name];
    if (g) grads[name] = g;
  }
  return { value, grads };
}

/** Scales the gradients in place to a global norm of at most `max` (0: no clipping); returns the norm before. */
export function clipByGlobalNorm(grads: tf.NamedTensorMap, max: number): number {
  const normTensor = tf.tidy(() => tf.sqrt(tf.addN(Object.values(grads).map((g) => tf.sum(tf.mul(g, g))))));
  const norm = normTensor.dataSync()[0]!;
  normTensor.dispose();
  if (max > 0 && norm > max) {
    const scale = max / (norm + 1e-6);
    for (const name of Object.keys(grads)) {
      const scaled = tf.mul(grads[name]!, scale);
      grads[name]!.dispose();
      grads[name] = scaled;
    }
  }
  return norm;
}
