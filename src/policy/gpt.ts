/**
 * A GPT-style causal transformer language model on TensorFlow.js, read top to bottom:
 * config, parameters, the fast differentiable pieces, the block, forward, log-probs.
 *
 *   logits = head(LN_f(block_L(...block_1(wte[ids] + wpe[positions]))))
 *   block(x) = x' + MLP(LN_2(x')),  x' = x + Attention(LN_1(x))      (pre-LayerNorm, GPT-2)
 *
 * With `positionEncoding: 'rope'` there is no wpe: attention rotates each query and key by its
 * position instead (RoPE, as Llama, Qwen and DeepSeek's models do), so q.k depends only on how far
 * apart two tokens are, and whatever the model learns to read from the token two back works at every
 * position. Learned absolute positions have to learn that at each position separately: a small model
 * on Countdown, whose steps land at different positions in every document, did not.
 *
 * The output head is untied from the token embedding: with a vocabulary of ~100 characters the
 * head is about 1% of the weights, and separate matrices keep both the one-hot embedding and the
 * head plain no-transpose matmuls (the fast path on wasm, below).
 *
 * Backend traps this file works around (tfjs-backend-wasm 4.22, measured): `gather` has no usable gradient on wasm, so
 * lookups are `oneHot(ids) @ W`. The stock wasm matmul runs a matmul with transpose flags on a slow
 * loop, so the matmul gradients pass flags only where the backend takes them well (matMulT). On
 * wasm, attention, LayerNorm, GELU and column sums run on rxrl's own SIMD kernels (simdKernels.ts)
 * where the head size and width allow; elsewhere on tfjs ops.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { normalArray, seededUniform } from '../random.ts';
import { causalAttentionQkv, causalAttentionQkvGrad, gemmKernelInstalled } from './gemmKernel.ts';
import * as simd from './simdKernels.ts';

export const GPTConfig = z
  .object({
    vocabSize: z.int().positive(),
    contextLength: z.int().positive().describe('Longest sequence (prompt + completion) the positions cover.'),
    dModel: z.int().positive(),
    nLayers: z.int().positive(),
    nHeads: z.int().positive(),
    positionEncoding: z
      .enum(['learned', 'rope'])
      .optional()
      .describe(
        "'learned' (default): a learned position embedding added to the input (GPT-2). " +
          "'rope': queries and keys rotated by position (RoPE), so attention sees relative positions.",
      ),
    mlpRatio: z
      .int()
      .positive()
      .optional()
      .describe('MLP hidden width as a multiple of dModel; 4 by default.'),
    seed: z.int().describe('Fixes the initial weights, the same on every backend.'),
  })
  .strict()
  .refine((c) => c.dModel % c.nHeads === 0, {
    message: 'dModel must be a multiple of nHeads',
    path: ['dModel'],
  });
export type GPTConfig = z.infer<typeof GPTConfig>;

/**
 * Keys and values of one layer for every position attended to so far: [B, H, S, headDim].
 * A type alias, not an interface, so that tf.tidy accepts it in what it returns.
 */
export type LayerKV = { k: tf.Tensor4D; v: tf.Tensor4D };

export interface RunOptions {
  /** Position of every token [B, T] int32; default 0..T-1 in every row. */
  positions?: tf.Tensor2D;
  /** Added to the attention scores [B or 1, 1, T, S]: 0 to attend, MASKED not to. */
  bias: tf.Tensor4D;
  /** Keys/values of the S - T earlier positions, per layer (the KV cache). */
  past?: readonly LayerKV[];
  /**
   * Instead of `past`, for one new token per row (T = 1): per layer, key and value buffers
   * [B, H, capacity, hd] holding the first `length` positions; this token's key and value are
   * written into them at position `length` (see simdKernels.ts, which must be available), and
   * `present` is these same buffers.
   */
  inPlace?: { layers: readonly LayerKV[]; length: number };
  /** Compute logits for the last position of each row only. */
  lastOnly?: boolean;
  /**
   * `bias` is causalBias(T) and there is no `past`: plain causal attention over each row's tokens.
   * On wasm, rxrl's kernels then skip the keys after each query instead of masking them, and
   * `present` comes back empty.
   */
  causal?: boolean;
}

const LN_EPS = 1e-5;
/** Added to the attention scores of masked keys. Finite, so a row with no valid key gives no NaN. */
export const MASKED = -1e9;

// ---------------------------------------------------------------------------------------------
// Differentiable pieces with hand-written gradients.

/**
 * tf.customGrad with typed arguments: `f` gets the inputs and returns the value, the tensors the
 * gradient needs, and the gradient itself (one tensor per input).
 */
function differentiable(
  f: (...inputs: tf.Tensor[]) => {
    value: tf.Tensor;
    save: tf.Tensor[];
    gradient: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[];
  },
): (...inputs: tf.Tensor[]) => tf.Tensor {
  return tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    const { value, save: toSave, gradient } = f(...(args as tf.Tensor[]));
    save(toSave);
    return { value, gradFunc: gradient };
  });
}

/**
 * a @ b with a and/or b transposed, for the gradients. On wasm the transposes are explicit unless
 * rxrl's matmul (gemmKernel.ts) is installed, which reads through the flags without a copy: the
 * stock matmul runs flags on a loop 3-4x slower than XNNPACK (measured), and wasmKernels.ts's
 * transposes them for XNNPACK at no gain (measured slower on a gradient's shape). The other
 * backends take the flags.
 */
function matMulT(a: tf.Tensor, b: tf.Tensor, transposeA: boolean, transposeB: boolean): tf.Tensor {
  if (tf.getBackend() === 'wasm' && !gemmKernelInstalled())
    return tf.matMul(transposeA ? tf.transpose(a) : a, transposeB ? tf.transpose(b) : b);
  return tf.matMul(a, b, transposeA, transposeB);
}

/** The gradients of x @ w: dy @ w^T and x^T @ dy. */
function matMulGradients(dy: tf.Tensor, x: tf.Tensor, w: tf.Tensor): [tf.Tensor, tf.Tensor] {
  return [matMulT(dy, w, false, true), matMulT(x, dy, true, false)];
}

/** x @ w for 2-D x. */
const matMulFast = differentiable((x, w) => ({
  value: tf.matMul(x, w),
  save: [x, w],
  gradient: (dy, [xs, ws]) => matMulGradients(dy, xs!, ws!),
}));

const linear = differentiable((x, w, b) => ({
  value: tf.fused.matMul({ a: x as tf.Tensor2D, b: w as tf.Tensor2D, bias: b! }),
  save: [x, w],
  gradient: (dy, [xs, ws]) => [...matMulGradients(dy, xs!, ws!), columnSum(dy)],
}));

/**
 * Sum over the rows of 2-D x: rxrl's SIMD kernel on wasm; else ones @ x (wasm's Sum over axis 0,
 * which transposes first, is ~9x slower than that).
 */
function columnSum(x: tf.Tensor): tf.Tensor1D {
  const [rows, cols] = x.shape as [number, number];
  if (simd.simdKernelsAvailable(cols)) return simd.columnSum(x as tf.Tensor2D);
  return tf.reshape(tf.matMul(tf.ones([1, rows]), x), [cols]);
}

/** oneHot @ W: an embedding lookup with a gradient on every backend; no gradient to the one-hot. */
const embed = differentiable((oneHot, w) => ({
  value: tf.matMul(oneHot, w),
  save: [oneHot],
  gradient: (dy, [oh]) => [tf.zerosLike(oh!), matMulT(oh!, dy, true, false)],
}));

/**
 * LayerNorm over the last axis of 2-D x; the gradient in closed form rather than via moments. On
 * wasm, rxrl's SIMD kernels compute both in one pass each (simdKernels.ts).
 */
const layerNorm = differentiable((x, gain, bias) => {
  if (simd.simdKernelsAvailable(x.shape[1]!)) {
    const [value, xhat, rstd] = simd.layerNormRows(x as tf.Tensor2D, gain!, bias!, LN_EPS);
    return {
      value,
      save: [xhat, rstd, gain!],
      gradient: (dy, [xh, rs, g]) => simd.layerNormGrad(dy, xh!, rs!, g!),
    };
  }
  const centred = tf.sub(x, tf.mean(x, 1, true));
  const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(centred), 1, true), LN_EPS));
  const xhat = tf.mul(centred, rstd);
  return {
    value: tf.add(tf.mul(xhat, gain!), bias!),
    save: [xhat, rstd, gain!],
    gradient: (dy, [xh, rs, g]) => {
      // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dy * gain
      const dxhat = tf.mul(dy, g!);
      const dx = tf.mul(
        rs!,
        tf.sub(tf.sub(dxhat, tf.mean(dxhat, 1, true)), tf.mul(xh!, tf.mean(tf.mul(dxhat, xh!), 1, true))),
      );
      return [dx, columnSum(tf.mul(dy, xh!)), columnSum(dy)];
    },
  };
});

/**
 * GELU in its sigmoid form x * sigmoid(1.702 x) (Hendrycks & Gimpel 2016, sec. 2), not the erf or
 * tanh forms: on wasm, Sigmoid runs ~12x faster than Erf or Tanh.
 * d/dx = s + 1.702 x s (1 - s), s = sigmoid(1.702 x).
 */
const GELU_K = 1.702;
const gelu = differentiable((x) => {
  if (simd.simdKernelsAvailable(x.size)) {
    const [value, s] = simd.gelu(x);
    return { value, save: [x, s], gradient: (dy, [xs, ss]) => [simd.geluGrad(dy, xs!, ss!)] };
  }
  const s = tf.sigmoid(tf.mul(x, GELU_K));
  return {
    value: tf.mul(x, s),
    save: [x, s],
    gradient: (dy, [xs, ss]) => {
      const slope = tf.mul(tf.mul(xs!, GELU_K), tf.mul(ss!, tf.sub(1, ss!)));
      return [tf.mul(dy, tf.add(ss!, slope))];
    },
  };
});

/** Causal self-attention on [B*T, H*hd] queries, keys and values by rxrl's wasm kernels, with its gradient. */
function causalSelfAttention(heads: { B: number; T: number; H: number }, scale: number) {
  return differentiable((q, k, v) => {
    const [value, p] = simd.causalAttention(
      q as tf.Tensor2D,
      k as tf.Tensor2D,
      v as tf.Tensor2D,
      heads,
      scale,
    );
    return {
      value,
      save: [q!, k!, v!, p],
      gradient: (dy, [qs, ks, vs, ps]) => simd.causalAttentionGrad(dy, qs!, ks!, vs!, ps!, heads, scale),
    };
  });
}

/**
 * The same from the q/k/v projection's output [B*T, 3 H*hd] as it is, on gemmKernel.ts's kernels: no
 * split into three copies, and no concat of their gradients.
 */
function causalSelfAttentionQkv(heads: { B: number; T: number; H: number }, scale: number) {
  return differentiable((qkv) => {
    const [value, p] = causalAttentionQkv(qkv as tf.Tensor2D, heads, scale);
    return {
      value,
      save: [qkv!, p],
      gradient: (dy, [qkvs, ps]) => [causalAttentionQkvGrad(dy, qkvs!, ps!, heads, scale)],
    };
  });
}

// ---------------------------------------------------------------------------------------------
// The model.

export class GPT {
  /**
   * Decoding steps over an in-place KV cache run each block as one RxrlDecodeLayer call (the same
   * floats as op by op). False runs them op by op (for tests and benches that compare the two).
   */
  static fuseDecoding = true;
  readonly config: Readonly<Required<GPTConfig>>;
  /** Every weight by name, in a fixed order: what optimisers and checkpoints see. */
  readonly params: ReadonlyMap<string, tf.Variable>;
  readonly headDim: number;
  /** RoPE's tables (constants, not weights), with positionEncoding 'rope'. */
  private readonly rope: Rope | undefined;

  constructor(config: GPTConfig) {
    const parsed = GPTConfig.safeParse(config);
    if (!parsed.success) throw new Error(`GPT config is invalid: ${z.prettifyError(parsed.error)}`);
    this.config = Object.freeze({
      ...parsed.data,
      positionEncoding: parsed.data.positionEncoding ?? 'learned',
      mlpRatio: parsed.data.mlpRatio ?? 4,
    });
    if (this.config.positionEncoding === 'rope' && this.config.dModel / this.config.nHeads < 2)
      throw new Error('GPT config is invalid: RoPE needs at least 2 dimensions per head');
    this.headDim = this.config.dModel / this.config.nHeads;
    this.params = initialParams(this.config);
    this.rope = this.config.positionEncoding === 'rope' ? ropeTables(this.config) : undefined;
  }

  /** Weights in creation order, for optimisers and tf.variableGrads. */
  variables(): tf.Variable[] {
    return [...this.params.values()];
  }

  parameterCount(): number {
    return this.variables().reduce((n, v) => n + v.size, 0);
  }

  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    if (this.rope) tf.dispose([this.rope.cos, this.rope.sin, this.rope.rotateHalf]);
  }

  /**
   * Overwrites every weight with the same-named, same-shaped entry of `weights` (another model's
   * `params`, or arrays read from a checkpoint). Names or shapes that differ are an error.
   */
  assignWeights(weights: ReadonlyMap<string, tf.Tensor | Float32Array>): void {
    const missing = [...this.params.keys()].filter((name) => !weights.has(name));
    const extra = [...weights.keys()].filter((name) => !this.params.has(name));
    if (missing.length > 0 || extra.length > 0) {
      throw new Error(
        `assignWeights: names differ; missing [${missing.join(', ')}], unexpected [${extra.join(', ')}]`,
      );
    }
    for (const [name, variable] of this.params) {
      const value = weights.get(name)!;
      const size = value instanceof tf.Tensor ? value.size : value.length;
      if (
        value instanceof tf.Tensor
          ? !tf.util.arraysEqual(value.shape, variable.shape)
          : size !== variable.size
      ) {
        const shape = value instanceof tf.Tensor ? `[${value.shape.join(', ')}]` : `${size} values`;
        throw new Error(`assignWeights: ${name} has shape [${variable.shape.join(', ')}], got ${shape}`);
      }
      tf.tidy(() => variable.assign(value instanceof tf.Tensor ? value : tf.tensor(value, variable.shape)));
    }
  }

  /** Each block's weights by their names within the block (made once: the Variables stay the same objects). */
  private blocks: simd.BlockWeights[] | undefined;

  /** Block l's weights, by their names within the block. */
  private block(l: number): simd.BlockWeights {
    this.blocks ??= Array.from({ length: this.config.nLayers }, (_, i) => this.blockWeights(i));
    return this.blocks[l]!;
  }

  private blockWeights(l: number): simd.BlockWeights {
    const names = [
      'ln1.g',
      'ln1.b',
      'attn.wqkv',
      'attn.bqkv',
      'attn.wo',
      'attn.bo',
      'ln2.g',
      'ln2.b',
      'mlp.w1',
      'mlp.b1',
      'mlp.w2',
      'mlp.b2',
    ] as const;
    return Object.fromEntries(
      names.map((name) => [name, this.p(`h${l}.${name}`)]),
    ) as unknown as simd.BlockWeights;
  }

  private p(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`GPT: no parameter named ${name}`);
    return v;
  }

  /** Logits [B, T, V] of the next token at every position; rows start at position 0. */
  forward(ids: tf.Tensor2D): tf.Tensor3D {
    return tf.tidy(() => {
      const [B, T] = ids.shape;
      const { logits } = this.run(ids, { bias: causalBias(T), causal: true });
      return tf.reshape(logits, [B, T, this.config.vocabSize]);
    });
  }

  /**
   * Full next-token distributions log softmax(logits / temperature) [B, T-1, V]: entry t is the
   * distribution of token t+1 given tokens 0..t. One batched forward; differentiable.
   */
  nextTokenLogProbs(ids: tf.Tensor2D, temperature = 1): tf.Tensor3D {
    if (!(temperature > 0)) throw new Error(`nextTokenLogProbs: temperature must be > 0, got ${temperature}`);
    return tf.tidy(() => {
      const [B, T] = ids.shape;
      if (T < 2) throw new Error(`nextTokenLogProbs: need at least 2 tokens per row, got ${T}`);
      const inputs = tf.slice(ids, [0, 0], [B, T - 1]);
      const { logits } = this.run(inputs, { bias: causalBias(T - 1), causal: true });
      const scaled = temperature === 1 ? logits : tf.div(logits, temperature);
      return tf.reshape(tf.logSoftmax(scaled), [B, T - 1, this.config.vocabSize]);
    });
  }

  /**
   * Log-prob of each next token, log softmax(logits / temperature)[ids[t+1]], as [B, T-1], times
   * mask[t+1] (mask [B, T] marks the tokens to score, e.g. the completion). Rows start at position
   * 0; padding goes at the end (causal attention never lets it reach earlier tokens).
   * Differentiable w.r.t. the variables: call it inside tf.variableGrads.
   */
  sequenceLogProbs(ids: tf.Tensor2D, mask: tf.Tensor2D, temperature = 1): tf.Tensor2D {
    return tf.tidy(() => pickTokenLogProbs(this.nextTokenLogProbs(ids, temperature), ids, mask));
  }

  /**
   * The transformer on ids [B, T], for callers that place rows themselves (the sampler; call it
   * inside tf.tidy). Returns logits [B*T, V] (or [B, V] with lastOnly: the last position of each
   * row) and the keys/values of all S = past + T positions per layer, to cache (none with
   * `causal` on wasm; the in-place buffers with `inPlace`).
   */
  run(ids: tf.Tensor2D, options: RunOptions): { logits: tf.Tensor2D; present: LayerKV[] } {
    const { positions, bias, past, inPlace, lastOnly = false, causal = false } = options;
    const { vocabSize, contextLength, dModel, nLayers } = this.config;
    const [B, T] = ids.shape;
    const flatIds = tf.reshape(ids, [B * T]);
    let x = embed(oneHotFloat(flatIds, vocabSize), this.p('wte')) as tf.Tensor2D;
    if (!positions && T > contextLength)
      throw new Error(`GPT: sequence of ${T} tokens exceeds contextLength ${contextLength}`);
    if (inPlace && (T !== 1 || past || !simd.simdKernelsAvailable(this.headDim)))
      throw new Error(
        'GPT: an in-place KV cache takes one token per row, no `past`, and the wasm backend with ' +
          `rxrl's cached-attention kernels (got ${T} tokens, backend ${tf.getBackend()})`,
      );
    const onePos = positions && oneHotFloat(tf.reshape(positions, [B * T]), contextLength);
    let rotation: Rope | undefined;
    if (this.rope) {
      // cos and sin of every token's angles, [B*T, d].
      const at = (table: tf.Tensor2D): tf.Tensor2D =>
        onePos ? tf.matMul(onePos, table) : tf.tile(tf.slice(table, [0, 0], [T, dModel]), [B, 1]);
      rotation = { cos: at(this.rope.cos), sin: at(this.rope.sin), rotateHalf: this.rope.rotateHalf };
    } else if (onePos) {
      x = tf.add(x, embed(onePos, this.p('wpe')));
    } else {
      const wpe = tf.slice(this.p('wpe'), [0, 0], [T, dModel]);
      x = tf.reshape(tf.add(tf.reshape(x, [B, T, dModel]), wpe), [B * T, dModel]);
    }
    const fusedCausal = causal && !past && simd.simdKernelsAvailable(this.headDim);
    const present: LayerKV[] = [];
    for (let l = 0; l < nLayers; l++) {
      if (inPlace && !rotation && GPT.fuseDecoding) {
        // A decoding step: the whole block in one engine call, the same kernels in the same order.
        const cache = inPlace.layers[l]!;
        x = simd.decodeLayer(
          x,
          this.block(l),
          cache,
          bias,
          inPlace.length + 1,
          1 / Math.sqrt(this.headDim),
          LN_EPS,
        );
        present.push(cache);
        continue;
      }
      const normed = this.norm(`h${l}.ln1`, x);
      const attn = inPlace
        ? this.attentionInPlace(l, normed, B, bias, inPlace.layers[l]!, inPlace.length, rotation)
        : fusedCausal
          ? this.attentionCausal(l, normed, B, T, rotation)
          : this.attention(l, normed, B, T, bias, past?.[l], rotation);
      if (attn.kv) present.push(attn.kv);
      x = tf.add(x, attn.y);
      x = tf.add(x, this.mlp(l, this.norm(`h${l}.ln2`, x)));
    }
    if (lastOnly) {
      x = tf.reshape(tf.slice(tf.reshape(x, [B, T, dModel]), [0, T - 1, 0], [B, 1, dModel]), [B, dModel]);
    }
    const logits = matMulFast(this.norm('lnf', x), this.p('head')) as tf.Tensor2D;
    return { logits, present };
  }

  private norm(name: string, x: tf.Tensor2D): tf.Tensor2D {
    return layerNorm(x, this.p(`${name}.g`), this.p(`${name}.b`)) as tf.Tensor2D;
  }

  /** Multi-head causal self-attention on x [B*T, d]; `past` holds earlier keys/values. */
  private attention(
    l: number,
    x: tf.Tensor2D,
    B: number,
    T: number,
    bias: tf.Tensor4D,
    past: LayerKV | undefined,
    rotation: Rope | undefined,
  ): { y: tf.Tensor2D; kv: LayerKV } {
    const { dModel, nHeads } = this.config;
    const hd = this.headDim;
    // [B*T, d] -> [B, H, T, hd] for each of q, k, v. With one position (a decoding step) the
    // transpose only moves a size-1 axis, so a reshape (no copy, no kernel) does it.
    const heads = (t: tf.Tensor): tf.Tensor4D =>
      T === 1
        ? tf.reshape(t, [B, nHeads, 1, hd])
        : tf.transpose(tf.reshape(t, [B, T, nHeads, hd]), [0, 2, 1, 3]);
    const { q, k, v } = this.queryKeyValue(l, x, rotation, heads);
    const kAll = past ? tf.concat([past.k, k], 2) : k;
    const vAll = past ? tf.concat([past.v, v], 2) : v;
    // softmax(q k^T / sqrt(hd) + bias) v; the scale goes on q, the smaller tensor. These matmuls
    // are batched, so wasm runs them on its plain loop whatever the transpose flags.
    const scores = tf.add(tf.matMul(tf.mul(q, 1 / Math.sqrt(hd)), kAll, false, true), bias);
    const y = tf.matMul(tf.softmax(scores), vAll);
    const merged = tf.reshape(T === 1 ? y : tf.transpose(y, [0, 2, 1, 3]), [B * T, dModel]);
    return { y: this.attentionOut(l, merged), kv: { k: kAll, v: vAll } };
  }

  /** Attention for one new token per row over an in-place KV cache (RunOptions.inPlace). */
  private attentionInPlace(
    l: number,
    x: tf.Tensor2D,
    B: number,
    bias: tf.Tensor4D,
    cache: LayerKV,
    length: number,
    rotation: Rope | undefined,
  ): { y: tf.Tensor2D; kv: LayerKV } {
    const { dModel, nHeads } = this.config;
    const hd = this.headDim;
    const { q, k, v } = this.queryKeyValue(
      l,
      x,
      rotation,
      (t) => tf.reshape(t, [B, nHeads, 1, hd]) as tf.Tensor4D,
    );
    const y = simd.cachedAttention(q, k, v, cache, bias, length + 1, 1 / Math.sqrt(hd));
    return { y: this.attentionOut(l, tf.reshape(y, [B, dModel])), kv: cache };
  }

  /**
   * Causal self-attention on x [B*T, d] by rxrl's wasm kernels (RunOptions.causal): they read the
   * heads where the projections put them, and skip the keys after each query. No keys/values to cache.
   */
  private attentionCausal(
    l: number,
    x: tf.Tensor2D,
    B: number,
    T: number,
    rotation: Rope | undefined,
  ): { y: tf.Tensor2D; kv: undefined } {
    const heads = { B, T, H: this.config.nHeads };
    const scale = 1 / Math.sqrt(this.headDim);
    if (!rotation && gemmKernelInstalled()) {
      // Queries and keys need no rotation: attend on the projection's output as it lies.
      const qkv = this.queryKeyValueProjection(l, x);
      return {
        y: this.attentionOut(l, causalSelfAttentionQkv(heads, scale)(qkv) as tf.Tensor2D),
        kv: undefined,
      };
    }
    const { q, k, v } = this.queryKeyValue(l, x, rotation, (t) => t as tf.Tensor2D);
    const y = causalSelfAttention(heads, scale)(q, k, v);
    return { y: this.attentionOut(l, y), kv: undefined };
  }

  /** The projections of x [B*T, d] to queries, keys (RoPE-rotated with `rotation`) and values, split into heads. */
  private queryKeyValue<S extends tf.Tensor>(
    l: number,
    x: tf.Tensor2D,
    rotation: Rope | undefined,
    heads: (t: tf.Tensor) => S,
  ): { q: S; k: S; v: S } {
    const qkv = this.queryKeyValueProjection(l, x);
    // Not written back into split's array: tfjs's tape keeps that very array as the op's outputs, so
    // replacing an entry would send the gradient of the rotated tensor straight into the split.
    const [qIn, kIn, vIn] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
    return {
      q: heads(rotation ? rotate(qIn, rotation) : qIn),
      k: heads(rotation ? rotate(kIn, rotation) : kIn),
      v: heads(vIn),
    };
  }

  /** x [B*T, d] projected to queries, keys and values side by side: [B*T, 3d]. */
  private queryKeyValueProjection(l: number, x: tf.Tensor2D): tf.Tensor2D {
    return linear(x, this.p(`h${l}.attn.wqkv`), this.p(`h${l}.attn.bqkv`)) as tf.Tensor2D;
  }

  private attentionOut(l: number, merged: tf.Tensor): tf.Tensor2D {
    return linear(merged, this.p(`h${l}.attn.wo`), this.p(`h${l}.attn.bo`)) as tf.Tensor2D;
  }

  private mlp(l: number, x: tf.Tensor2D): tf.Tensor2D {
    const hidden = gelu(linear(x, this.p(`h${l}.mlp.w1`), this.p(`h${l}.mlp.b1`)));
    return linear(hidden, this.p(`h${l}.mlp.w2`), this.p(`h${l}.mlp.b2`)) as tf.Tensor2D;
  }
}

/**
 * GPT-2 initialisation, drawn in JS from the seed so it is the same on every backend: weights
 * normal(0, 0.02), the two projections into the residual stream scaled by 1/sqrt(2 nLayers) so
 * the stream's variance does not grow with depth, biases 0, LayerNorm gains 1.
 */
function initialParams(c: Required<GPTConfig>): Map<string, tf.Variable> {
  const uniform = seededUniform(c.seed);
  const d = c.dModel;
  const hidden = c.mlpRatio * d;
  const residualStd = 0.02 / Math.sqrt(2 * c.nLayers);
  const params = new Map<string, tf.Variable>();
  const normal = (name: string, shape: number[], std = 0.02): void => {
    const size = shape.reduce((a, b) => a * b, 1);
    params.set(name, ownVariable(tf.tensor(normalArray(size, std, uniform), shape)));
  };
  const constant = (name: string, size: number, value: number): void => {
    params.set(name, ownVariable(tf.fill([size], value)));
  };
  normal('wte', [c.vocabSize, d]);
  if (c.positionEncoding === 'learned') normal('wpe', [c.contextLength, d]);
  for (let l = 0; l < c.nLayers; l++) {
    constant(`h${l}.ln1.g`, d, 1);
    constant(`h${l}.ln1.b`, d, 0);
    normal(`h${l}.attn.wqkv`, [d, 3 * d]);
    constant(`h${l}.attn.bqkv`, 3 * d, 0);
    normal(`h${l}.attn.wo`, [d, d], residualStd);
    constant(`h${l}.attn.bo`, d, 0);
    constant(`h${l}.ln2.g`, d, 1);
    constant(`h${l}.ln2.b`, d, 0);
    normal(`h${l}.mlp.w1`, [d, hidden]);
    constant(`h${l}.mlp.b1`, hidden, 0);
    normal(`h${l}.mlp.w2`, [hidden, d], residualStd);
    constant(`h${l}.mlp.b2`, d, 0);
  }
  constant('lnf.g', d, 1);
  constant('lnf.b', d, 0);
  normal('head', [d, c.vocabSize]);
  return params;
}

/**
 * RoPE's cos and sin of each row's angles, and rotate-half [d, d]: the model's tables have a row per
 * position [contextLength, d]; a forward pass's have a row per token [B*T, d].
 */
type Rope = { cos: tf.Tensor2D; sin: tf.Tensor2D; rotateHalf: tf.Tensor2D };

/**
 * RoPE (Su et al. 2021) in the rotate-half layout of GPT-NeoX and Llama: within each head, dimension
 * j < hd/2 pairs with j + hd/2, and the pair turns by position x theta_j, theta_j = 10000^(-2j/hd).
 * The tables repeat per head, so a [B*T, d] activation (heads side by side) is rotated in one go.
 */
function ropeTables(c: Required<GPTConfig>): Rope {
  const d = c.dModel;
  const hd = d / c.nHeads;
  const half = Math.floor(hd / 2);
  const cos = new Float32Array(c.contextLength * d).fill(1);
  const sin = new Float32Array(c.contextLength * d);
  for (let pos = 0; pos < c.contextLength; pos++) {
    for (let h = 0; h < c.nHeads; h++) {
      for (let j = 0; j < 2 * half; j++) {
        const angle = pos * Math.pow(10000, (-2 * (j % half)) / hd);
        cos[pos * d + h * hd + j] = Math.cos(angle);
        sin[pos * d + h * hd + j] = Math.sin(angle);
      }
    }
  }
  // x @ rotateHalf = (-x2, x1) per head, for x = (x1, x2) its two halves (an odd last dimension stays put).
  const rotateHalf = new Float32Array(d * d);
  for (let h = 0; h < c.nHeads; h++) {
    for (let j = 0; j < half; j++) {
      const first = h * hd + j;
      const second = first + half;
      rotateHalf[second * d + first] = -1;
      rotateHalf[first * d + second] = 1;
    }
  }
  // Kept: a model built inside tf.tidy must not lose them when the tidy ends (its variables are safe).
  return {
    cos: tf.keep(tf.tensor2d(cos, [c.contextLength, d])),
    sin: tf.keep(tf.tensor2d(sin, [c.contextLength, d])),
    rotateHalf: tf.keep(tf.tensor2d(rotateHalf, [d, d])),
  };
}

/**
 * x @ r for a constant r: the gradient goes to x only (dy @ r^T), not to r, saving the [d, d] weight
 * gradient matmul that matMulFast would compute.
 */
const constantMatMul = differentiable((x, r) => ({
  value: tf.matMul(x, r),
  save: [r],
  gradient: (dy, [rs]) => [matMulT(dy, rs!, false, true), tf.zerosLike(rs!)],
}));

/** RoPE on a [B*T, d] query or key: x cos + rotateHalf(x) sin. */
function rotate(x: tf.Tensor2D, { cos, sin, rotateHalf }: Rope): tf.Tensor2D {
  return tf.add(tf.mul(x, cos), tf.mul(constantMatMul(x, rotateHalf), sin));
}

/** Attention bias [1, 1, T, T]: 0 where key <= query, MASKED above the diagonal. */
export function causalBias(T: number): tf.Tensor4D {
  const bias = new Float32Array(T * T);
  for (let i = 0; i < T; i++) bias.fill(MASKED, i * T + i + 1, (i + 1) * T);
  return tf.tensor4d(bias, [1, 1, T, T]);
}

/** From next-token log-probs [B, T-1, V], the log-prob of each actual next token, masked: [B, T-1]. */
export function pickTokenLogProbs(logProbs: tf.Tensor3D, ids: tf.Tensor2D, mask: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const [B, T] = ids.shape;
    const V = logProbs.shape[2];
    // sum(logp * oneHot) instead of gather: gather has no gradient on wasm.
    const targets = oneHotFloat(tf.slice(ids, [0, 1], [B, T - 1]), V);
    return tf.mul(tf.sum(tf.mul(logProbs, targets), 2), nextMask(mask));
  });
}

/** Entropy -sum_v p log p of each next-token distribution [B, T-1, V], masked like pickTokenLogProbs. */
export function tokenEntropy(logProbs: tf.Tensor3D, mask: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => tf.mul(tf.neg(tf.sum(tf.mul(tf.exp(logProbs), logProbs), 2)), nextMask(mask)));
}

/**
 * One-hot as float32. Not tf.oneHot(..., 'float32'): wasm's OneHot kernel ignores the dtype and
 * writes int32 bits into a tensor labelled float32 (1 reads as 1.4e-45).
 */
function oneHotFloat(ids: tf.Tensor, depth: number): tf.Tensor {
  return tf.cast(tf.oneHot(ids, depth), 'float32');
}

function nextMask(mask: tf.Tensor2D): tf.Tensor2D {
  const [B, T] = mask.shape;
  return tf.cast(tf.slice(mask, [0, 1], [B, T - 1]), 'float32');
}

/** A trainable variable holding `initial`, which is disposed (tf.variable keeps its own reference). */
function ownVariable(initial: tf.Tensor): tf.Variable {
  const variable = tf.variable(initial);
  initial.dispose();
  return variable;
}
