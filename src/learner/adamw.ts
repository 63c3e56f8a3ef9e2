import * as tf from '@tensorflow/tfjs';
import { adamwStep, simdKernelsAvailable } from '../policy/simdKernels.ts';

export interface AdamWConfig {
  beta1?: number;
  beta2?: number;
  epsilon?: number;
  /** Decoupled weight decay (Loshchilov & Hutter), applied to matrices only, not to gains and biases. */
  weightDecay?: number;
}

/**
 * Adam with decoupled weight decay, over named variables. Written out (tf.train.adam has no weight
 * decay) so its moments are named tensors a checkpoint can save and restore exactly:
 *
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   p = p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr wd p
 */
export class AdamW {
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();
  private t = 0;
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly epsilon: number;
  private readonly weightDecay: number;

  constructor(
    private readonly params: ReadonlyMap<string, tf.Variable>,
    config: AdamWConfig = {},
  ) {
    this.beta1 = config.beta1 ?? 0.9;
    this.beta2 = config.beta2 ?? 0.999;
    this.epsilon = config.epsilon ?? 1e-8;
    this.weightDecay = config.weightDecay ?? 0;
    for (const [name, p] of params) {
      this.m.set(name, ownVariable(tf.zerosLike(p)));
      this.v.set(name, ownVariable(tf.zerosLike(p)));
    }
  }

  /** Steps taken (Adam's t): saved with the moments, so a resumed schedule goes on where it was. */
  get steps(): number {
    return this.t;
  }

  /**
   * One update with gradients by parameter name (a name without a gradient is left alone), each
   * multiplied by gradScale first (global-norm clipping's factor). On the wasm backend with rxrl's
   * kernels, one pass per parameter (simdKernels.ts's adamwStep, the same arithmetic).
   */
  apply(grads: tf.NamedTensorMap, learningRate: number, gradScale = 1): void {
    this.t++;
    const c1 = 1 - this.beta1 ** this.t;
    const c2 = 1 - this.beta2 ** this.t;
    const fused = simdKernelsAvailable(4);
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        const grad = grads[name];
        if (!grad) continue;
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        const weightDecay = p.rank >= 2 ? this.weightDecay : 0;
        if (fused) {
          const [p2, m2, v2] = adamwStep(p, grad, m, v, {
            gradScale,
            beta1: this.beta1,
            beta2: this.beta2,
            c1,
            c2,
            epsilon: this.epsilon,
            weightDecay,
            learningRate,
          });
          m.assign(m2);
          v.assign(v2);
          p.assign(p2);
          continue;
        }
        const g = gradScale === 1 ? grad : tf.mul(grad, gradScale);
        m.assign(tf.add(tf.mul(m, this.beta1), tf.mul(g, 1 - this.beta1)));
        v.assign(tf.add(tf.mul(v, this.beta2), tf.mul(tf.mul(g, g), 1 - this.beta2)));
        const update = tf.div(tf.div(m, c1), tf.add(tf.sqrt(tf.div(v, c2)), this.epsilon));
        const decay = weightDecay > 0 ? tf.mul(p, weightDecay) : undefined;
        p.assign(tf.sub(p, tf.mul(decay ? tf.add(update, decay) : update, learningRate)));
      }
    });
  }

  /** The moments and step count as named tensors, for a checkpoint. */
  state(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (const [name, m] of this.m) out.set(`adam.m/${name}`, m);
    for (const [name, v] of this.v) out.set(`adam.v/${name}`, v);
    out.set('adam.t', tf.scalar(this.t));
    return out;
  }

  /**
   * Calls `use` with `state()` (to save it), then frees the one tensor `state()` makes, the step count;
   * the moments are the optimiser's own.
   */
  async withState<T>(use: (state: ReadonlyMap<string, tf.Tensor>) => Promise<T>): Promise<T> {
    const state = this.state();
    try {
      return await use(state);
    } finally {
      state.get('adam.t')!.dispose();
    }
  }

  /** Restores what `state()` returned; a missing or misshapen entry is an error. */
  load(state: ReadonlyMap<string, tf.Tensor>): void {
    const t = state.get('adam.t');
    if (!t) throw new Error('AdamW.load: no adam.t in the optimiser state');
    for (const [kind, moments] of [
      ['m', this.m],
      ['v', this.v],
    ] as const) {
      for (const [name, variable] of moments) {
        const value = state.get(`adam.${kind}/${name}`);
        if (!value || !tf.util.arraysEqual(value.shape, variable.shape)) {
          throw new Error(`AdamW.load: adam.${kind}/${name} is missing or has the wrong shape`);
        }
        variable.assign(value);
      }
    }
    this.t = t.dataSync()[0]!;
  }

  dispose(): void {
    for (const x of [...this.m.values(), ...this.v.values()]) x.dispose();
  }
}

/** A non-trainable variable holding `initial`, which is disposed (tf.variable keeps its own reference). */
function ownVariable(initial: tf.Tensor): tf.Variable {
  const variable = tf.variable(initial, false);
  initial.dispose();
  return variable;
}
