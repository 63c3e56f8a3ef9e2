/**
 * Batched sampling from a GPT policy, with a KV cache: the prompts are run once (prefill), then
 * each step feeds only the newest token of every row and attends to the cached keys/values.
 *
 * Layout: prompts of different lengths are left-padded to the longest, P. Row b's first real
 * token sits at column P - L_b but at position 0, and attention never looks at its padding, so
 * every row computes exactly what it would alone; that is also what `sequenceLogProbs` computes
 * on the unpadded prompt + completion.
 *
 * Each sampled token comes with its behaviour log-prob log softmax(logits / temperature), taken
 * before top-k / top-p truncation: the quantity the learner recomputes for importance ratios. The
 * mismatch that truncation makes (tokens drawn from the truncated distribution) is measured, not
 * hidden: each completion reports the mean probability mass cut away before its draws.
 * Draws use a seeded JS generator, so a seed fixes the tokens on a given backend.
 */
import * as tf from '@tensorflow/tfjs';
import { simdKernelsAvailable } from './simdKernels.ts';
import { MASKED, type GPT, type LayerKV } from './gpt.ts';
import { seededUniform, type Uniform } from '../random.ts';

/** Token ids of each prompt to sample from. */
export type Prompts = readonly (readonly number[])[];

export interface SampleOptions {
  /** Most tokens generated per row; a row also stops when its position reaches contextLength. */
  maxNewTokens: number;
  /** Softmax temperature; 0 is greedy (argmax), whose log-probs are then at temperature 1. */
  temperature: number;
  /** Keep only the k most likely tokens (0 or undefined: all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1 or undefined: all). */
  topP?: number;
  /** Ends a row; the EOS token is part of the completion, with its log-prob. */
  eosId: number;
  seed: number;
  /** Fills the left padding and the rows already finished; never attended to. Default 0. */
  padId?: number;
  /**
   * Most rows decoded together; more prompts are sampled in runs of this many, run r > 0 seeded
   * from `seed` and r. Default: as many as keep the KV cache within KV_CACHE_BUDGET bytes.
   */
  maxRows?: number;
}

/**
 * Bytes of keys and values one decoding run may hold (256 MiB). Where the cache grows by
 * concatenation, a step briefly holds it twice, beside the activations; on wasm (in place) the prefill
 * does; and the wasm heap tops out at 4 GiB. A
 * batch too large failed inside the wasm module with an error that names no cause ("table index is
 * out of bounds"): `rxrl eval -k 32` on 128 Countdown prompts (4,096 rows, about 1 GiB of cache) did.
 */
export const KV_CACHE_BUDGET = 256 * 1024 * 1024;

/** Rows whose full KV cache (every layer's keys and values at contextLength, float32) fits the budget. */
export function rowsWithinBudget(config: GPT['config']): number {
  const perRow = config.contextLength * config.dModel * config.nLayers * 2 * 4;
  return Math.max(1, Math.floor(KV_CACHE_BUDGET / perRow));
}

export interface SampledCompletion {
  tokens: number[];
  /** Behaviour log-prob of each token in `tokens`. */
  logProbs: number[];
  finishReason: 'eos' | 'length';
  /**
   * Mean over `tokens` of the probability mass top-k/top-p cut away before each draw (0 when neither
   * truncates, and when decoding greedily).
   */
  truncatedMass: number;
}

/** Samples one completion per prompt with a KV cache. */
export function sample(model: GPT, prompts: Prompts, options: SampleOptions): Promise<SampledCompletion[]> {
  return inRuns(model, prompts, options, CachedDecoder);
}

/**
 * Same as `sample` but recomputes the whole sequence at every step: the reference the KV cache
 * is tested against, and the baseline it is measured against.
 */
export function sampleFullForward(
  model: GPT,
  prompts: Prompts,
  options: SampleOptions,
): Promise<SampledCompletion[]> {
  return inRuns(model, prompts, options, FullForwardDecoder);
}

/** Decodes the prompts in runs of at most `maxRows`; one run gives what one `decode` call gives. */
async function inRuns(
  model: GPT,
  prompts: Prompts,
  options: SampleOptions,
  Decoder: DecoderClass,
): Promise<SampledCompletion[]> {
  const maxRows = options.maxRows ?? rowsWithinBudget(model.config);
  if (!(Number.isInteger(maxRows) && maxRows > 0))
    throw new Error(`sample: maxRows must be an integer > 0, got ${maxRows}`);
  const out: SampledCompletion[] = [];
  for (let start = 0, run = 0; start < prompts.length || run === 0; start += maxRows, run++) {
    // Run 0 keeps the caller's seed, so a batch that fits in one run samples what it always did.
    const seed = run === 0 ? options.seed : Math.floor(seededUniform(options.seed + run * 7919)() * 2 ** 31);
    out.push(...(await decode(model, prompts.slice(start, start + maxRows), { ...options, seed }, Decoder)));
  }
  return out;
}

/** Gives next-token log-probs [B, V] at the given temperature, one step at a time. */
interface Decoder {
  prefill(temperature: number): tf.Tensor2D;
  /** Appends one token per row and returns the log-probs after it. */
  step(tokens: Int32Array, temperature: number): tf.Tensor2D;
  dispose(): void;
}

/** `capacity`: the most columns (left padding, prompt and sampled tokens) a row will reach. */
type DecoderClass = new (model: GPT, prompts: Prompts, padId: number, capacity: number) => Decoder;

async function decode(
  model: GPT,
  prompts: Prompts,
  options: SampleOptions,
  Decoder: DecoderClass,
): Promise<SampledCompletion[]> {
  const { maxNewTokens, temperature, eosId } = options;
  const B = prompts.length;
  const V = model.config.vocabSize;
  checkRequest(prompts, options, V);
  const rows: SampledCompletion[] = prompts.map(() => ({
    tokens: [],
    logProbs: [],
    finishReason: 'length',
    truncatedMass: 0,
  }));
  const cut = new Float64Array(B); // mass cut away, summed over each row's draws
  const kept = { mass: 1 };
  // A row may not grow past the position embedding.
  const limits = prompts.map((p) => Math.min(maxNewTokens, model.config.contextLength - p.length));
  const done = limits.map((limit) => limit <= 0);
  const uniform = seededUniform(options.seed);
  const logitTemperature = temperature === 0 ? 1 : temperature;
  const next = new Int32Array(B).fill(options.padId ?? 0);
  if (done.every(Boolean)) return rows;
  const finish = (): SampledCompletion[] => {
    rows.forEach((row, b) => (row.truncatedMass = row.tokens.length > 0 ? cut[b]! / row.tokens.length : 0));
    return rows;
  };
  const width = Math.max(...prompts.map((p) => p.length));
  const decoder = new Decoder(model, prompts, options.padId ?? 0, width + Math.max(...limits));
  try {
    let logProbs = decoder.prefill(logitTemperature);
    for (;;) {
      const data = (await logProbs.data()) as Float32Array;
      logProbs.dispose();
      for (let b = 0; b < B; b++) {
        const row = rows[b]!;
        if (done[b]) {
          next[b] = options.padId ?? 0;
          continue;
        }
        const dist = data.subarray(b * V, (b + 1) * V);
        let token: number;
        if (temperature === 0) token = argmax(dist);
        else {
          token = drawToken(dist, options, uniform, kept);
          cut[b] = cut[b]! + Math.max(0, 1 - kept.mass);
        }
        row.tokens.push(token);
        row.logProbs.push(dist[token]!);
        next[b] = token;
        if (token === eosId) row.finishReason = 'eos';
        if (token === eosId || row.tokens.length >= limits[b]!) done[b] = true;
      }
      if (done.every(Boolean)) return finish();
      logProbs = decoder.step(next, logitTemperature);
    }
  } finally {
    decoder.dispose();
  }
}

function checkRequest(prompts: Prompts, options: SampleOptions, V: number): void {
  const { maxNewTokens, temperature, topK, topP } = options;
  const fail = (what: string): never => {
    throw new Error(`sample: ${what}`);
  };
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0)
    fail(`maxNewTokens must be an integer >= 0, got ${maxNewTokens}`);
  if (!(temperature >= 0) || !Number.isFinite(temperature))
    fail(`temperature must be >= 0, got ${temperature}`);
  if (topK !== undefined && (!Number.isInteger(topK) || topK < 0))
    fail(`topK must be an integer >= 0, got ${topK}`);
  if (topP !== undefined && !(topP > 0 && topP <= 1)) fail(`topP must be in (0, 1], got ${topP}`);
  prompts.forEach((prompt, b) => {
    if (prompt.length === 0) fail(`prompt ${b} is empty; give at least one token (e.g. BOS)`);
    const bad = prompt.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= V);
    if (bad >= 0)
      fail(`prompt ${b} has token ${prompt[bad]} at position ${bad}, outside the vocabulary [0, ${V})`);
  });
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/**
 * Draws from exp(logProbs) truncated to the top-k, then to the top-p nucleus, renormalised: the
 * mass of truncatedSupport's ids, then the first of them (in id order) whose cumulative mass passes
 * uniform() times it. Two passes over the ids instead of a list of them (this runs once per row and
 * decoding step: the list, a sorted copy and a reversal each allocated were 5% of a ~1M model's
 * sampling call). `kept.mass`, when given, is set to the probability mass drawn from (1 when nothing
 * truncates).
 */
export function drawToken(
  logProbs: Float32Array,
  options: Pick<SampleOptions, 'topK' | 'topP'>,
  uniform: Uniform,
  kept?: { mass: number },
): number {
  const V = logProbs.length;
  const { all, cutoff, ties } = cutOff(logProbs, options);
  let mass = 0;
  for (let id = 0, left = ties; id < V; id++) {
    const lp = logProbs[id]!;
    if (all || lp > cutoff || (lp === cutoff && left-- > 0)) mass += Math.exp(lp);
  }
  if (Number.isNaN(mass)) throw notFinite();
  if (kept) kept.mass = all ? 1 : mass; // all: nothing cut (the sum is 1 but for rounding)
  const u = uniform() * mass;
  let cumulative = 0;
  let last = 0;
  for (let id = 0, left = ties; id < V; id++) {
    const lp = logProbs[id]!;
    if (all || lp > cutoff || (lp === cutoff && left-- > 0)) {
      cumulative += Math.exp(lp);
      if (u < cumulative) return id;
      last = id;
    }
  }
  return last;
}

/**
 * Token ids that top-k and top-p keep, in id order: the k most likely, then the fewest most likely
 * whose probability reaches p (ties at the cut-off kept by lowest id).
 */
export function truncatedSupport(
  logProbs: Float32Array,
  options: Pick<SampleOptions, 'topK' | 'topP'>,
): number[] {
  const { all, cutoff, ties } = cutOff(logProbs, options);
  const ids: number[] = [];
  for (let id = 0, left = ties; id < logProbs.length; id++) {
    const lp = logProbs[id]!;
    if (all || lp > cutoff || (lp === cutoff && left-- > 0)) ids.push(id);
  }
  return ids;
}

function notFinite(): Error {
  return new Error(
    "sample: a next-token distribution has NaN log-probs: the policy's logits are not finite " +
      '(diverged or corrupted weights?)',
  );
}

/** A sorted copy of a row's log-probs, reused from row to row (grown to the vocabulary). */
let sortScratch = new Float32Array(0);

/**
 * What top-k and top-p keep: every id (`all`, when neither truncates), or every id above `cutoff` and
 * the first `ties` (lowest ids) equal to it. The cut-off comes from a native numeric sort of the
 * values: sorting the ids with a comparator, once per row and step, cost 10-25% of a top-p sampling
 * call on the ~1M bench model. Throws on NaN log-probs, which no cut-off orders.
 */
function cutOff(
  logProbs: Float32Array,
  { topK, topP }: Pick<SampleOptions, 'topK' | 'topP'>,
): { all: boolean; cutoff: number; ties: number } {
  const V = logProbs.length;
  const truncateK = topK !== undefined && topK > 0 && topK < V;
  const truncateP = topP !== undefined && topP < 1;
  if (!truncateK && !truncateP) return { all: true, cutoff: -Infinity, ties: 0 };
  if (sortScratch.length < V) sortScratch = new Float32Array(V);
  const ascending = sortScratch.subarray(0, V);
  ascending.set(logProbs);
  ascending.sort();
  // A typed array sorts NaN last.
  if (Number.isNaN(ascending[V - 1])) throw notFinite();
  // The n-th most likely is ascending[V - 1 - n].
  let keep = truncateK ? topK : V;
  if (truncateP) {
    // Top-p within what top-k kept, renormalised (as Hugging Face's warpers and vLLM apply them in turn).
    let kept = 0;
    if (truncateK) for (let n = 0; n < keep; n++) kept += Math.exp(ascending[V - 1 - n]!);
    const target = truncateK ? topP * kept : topP;
    let cumulative = 0;
    for (let n = 0; n < keep; n++) {
      cumulative += Math.exp(ascending[V - 1 - n]!);
      if (cumulative >= target) {
        keep = n + 1;
        break;
      }
    }
  }
  const cutoff = ascending[V - keep]!;
  // Values equal to the cut-off that the top `keep` include: those from its last position in
  // descending order (its first in ascending order, V - 1 - lastIndexOf) up to keep.
  return { all: false, cutoff, ties: keep - (V - 1 - ascending.lastIndexOf(cutoff)) };
}

/**
 * Left-padded rows: the padded token grid, each token's position, and which columns are padding.
 * Tokens are appended to every row at once, so the padding of row b stays `offsets[b]` columns.
 */
class PaddedBatch {
  readonly offsets: number[];
  readonly columns: number[][];

  constructor(prompts: Prompts, padId: number) {
    const longest = Math.max(...prompts.map((p) => p.length));
    this.offsets = prompts.map((p) => longest - p.length);
    this.columns = prompts.map((p, b) => [...new Array<number>(this.offsets[b]!).fill(padId), ...p]);
  }

  get width(): number {
    return this.columns[0]!.length;
  }

  append(tokens: Int32Array): void {
    this.columns.forEach((row, b) => row.push(tokens[b]!));
  }

  /** Ids and positions [B, T] of the last T columns. */
  window(T: number): { ids: tf.Tensor2D; positions: tf.Tensor2D } {
    const B = this.columns.length;
    const start = this.width - T;
    const ids = new Int32Array(B * T);
    const positions = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        ids[b * T + t] = this.columns[b]![start + t]!;
        positions[b * T + t] = Math.max(0, start + t - this.offsets[b]!);
      }
    }
    return { ids: tf.tensor2d(ids, [B, T], 'int32'), positions: tf.tensor2d(positions, [B, T], 'int32') };
  }

  /**
   * Attention bias [B, 1, T, S] for the last T columns as queries over all S columns as keys:
   * MASKED for padding keys and for keys after the query.
   */
  bias(T: number): tf.Tensor4D {
    const B = this.columns.length;
    const S = this.width;
    const bias = new Float32Array(B * T * S);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const base = (b * T + t) * S;
        bias.fill(MASKED, base, base + this.offsets[b]!);
        bias.fill(MASKED, base + S - T + t + 1, base + S);
      }
    }
    return tf.tensor4d(bias, [B, 1, T, S]);
  }
}

function logSoftmaxAt(logits: tf.Tensor2D, temperature: number): tf.Tensor2D {
  return tf.logSoftmax(temperature === 1 ? logits : tf.div<tf.Tensor2D>(logits, temperature));
}

/**
 * The KV cache comes in two kinds. Where simdKernels.ts's attention runs (the wasm backend), it is
 * allocated once at the run's final length after the prefill, and each step writes its keys and
 * values into it in place. Elsewhere each step concatenates them onto the cache, a new tensor.
 */
class CachedDecoder implements Decoder {
  private readonly batch: PaddedBatch;
  private cache: LayerKV[] = [];
  private readonly inPlace: boolean;

  constructor(
    private readonly model: GPT,
    prompts: Prompts,
    padId: number,
    private readonly capacity: number,
  ) {
    this.batch = new PaddedBatch(prompts, padId);
    this.inPlace = simdKernelsAvailable(model.headDim);
  }

  prefill(temperature: number): tf.Tensor2D {
    const logProbs = this.advance(this.batch.width, temperature);
    if (this.inPlace) {
      // Pad each layer's keys and values along the position axis to the capacity: the buffers the
      // steps write into.
      const grow = [
        [0, 0],
        [0, 0],
        [0, this.capacity - this.batch.width],
        [0, 0],
      ] as [number, number][];
      const prefilled = this.cache;
      this.cache = prefilled.map(({ k, v }) => ({ k: tf.pad(k, grow), v: tf.pad(v, grow) }));
      for (const { k, v } of prefilled) tf.dispose([k, v]);
    }
    return logProbs;
  }

  step(tokens: Int32Array, temperature: number): tf.Tensor2D {
    this.batch.append(tokens);
    if (this.inPlace && this.batch.width > this.capacity)
      throw new Error(`sample: decoding past the KV cache's capacity of ${this.capacity} columns`);
    return this.advance(1, temperature);
  }

  /**
   * Runs the last T columns against the cache, which then holds every column: written in place
   * after the prefill where that is available, else concatenated into a new cache.
   */
  private advance(T: number, temperature: number): tf.Tensor2D {
    const writeInPlace = this.inPlace && this.cache.length > 0;
    const { logProbs, present } = tf.tidy(() => {
      const { ids, positions } = this.batch.window(T);
      const cache = writeInPlace
        ? { inPlace: { layers: this.cache, length: this.batch.width - T } }
        : { past: this.cache };
      const out = this.model.run(ids, { positions, bias: this.batch.bias(T), ...cache, lastOnly: true });
      return { logProbs: logSoftmaxAt(out.logits, temperature), present: out.present };
    });
    if (!writeInPlace) {
      this.disposeCache();
      this.cache = present;
    }
    return logProbs;
  }

  private disposeCache(): void {
    for (const { k, v } of this.cache) tf.dispose([k, v]);
    this.cache = [];
  }

  dispose(): void {
    this.disposeCache();
  }
}

class FullForwardDecoder implements Decoder {
  private readonly batch: PaddedBatch;

  constructor(
    private readonly model: GPT,
    prompts: Prompts,
    padId: number,
  ) {
    this.batch = new PaddedBatch(prompts, padId);
  }

  prefill(temperature: number): tf.Tensor2D {
    return tf.tidy(() => {
      const T = this.batch.width;
      const { ids, positions } = this.batch.window(T);
      const { logits } = this.model.run(ids, { positions, bias: this.batch.bias(T), lastOnly: true });
      return logSoftmaxAt(logits, temperature);
    });
  }

  step(tokens: Int32Array, temperature: number): tf.Tensor2D {
    this.batch.append(tokens);
    return this.prefill(temperature);
  }

  dispose(): void {}
}
