/**
 * rxrl's own WebAssembly SIMD kernels, registered on tfjs's wasm backend beside its stock ones:
 *
 * - RxrlCachedAttention: attention for one decoding step over a KV cache written in place,
 *     y[b,h] = softmax_j(scale * q[b,h] . K[b,h,j] + bias[b,j]) V[b,h,j]   for j < length,
 *   after writing K[b,h,length-1] = kNew[b,h] and V[b,h,length-1] = vNew[b,h]. K and V are
 *   [B, H, capacity, hd] buffers the sampler allocates once per decoding run.
 *   Why: with the cache grown by tf.concat, every decoding step copies every layer's keys and values
 *   (the whole cache, so O(length) a step), and the two attention matmuls, batched with one query row
 *   per head, run on the wasm backend's scalar loop (XNNPACK takes only unbatched matmuls, and the
 *   per-entry XNNPACK calls of wasmKernels.ts cost more than they save on one row). On the ~1M bench
 *   model (16 rows, 4 layers, 128 new tokens) that was 2 ms of a 5.3 ms step; this kernel does the
 *   same work in about a fifth of the time.
 * - RxrlLayerNorm and RxrlLayerNormGrad: LayerNorm over the last axis of [rows, d] and its
 *   gradient, each one pass over the rows instead of 9 and 12 tfjs kernels (each with its own trip
 *   through tfjs's engine and its own pass over memory).
 * - RxrlGelu and RxrlGeluGrad: GELU's sigmoid form and its gradient, one pass each instead of 3 and 6
 *   tfjs kernels.
 * - RxrlColumnSum: the sum of a [rows, cols] matrix's rows (bias gradients). tfjs's Sum over axis 0
 *   transposes first; GPT used ones @ x instead, which XNNPACK runs by packing x as weights every call.
 * - RxrlAdamW: AdamW's update of one parameter in one pass (reads p, g, m, v; writes p, m, v), the
 *   same float32 operations in the same order as the ~15 tfjs kernels of src/learner/adamw.ts.
 * - RxrlCausalAttention and RxrlCausalAttentionGrad: causal self-attention for training and
 *   scoring (forward and gradient), reading the heads where the q/k/v projections put them
 *   ([B*T, H*hd]) and skipping the keys after each query. tfjs ops need the heads transposed out
 *   and back, and compute and mask all T x T scores: twice the work, over four batched matmuls,
 *   a mask add and a softmax.
 *
 * Where relaxed SIMD compiles, gemmKernel.ts takes over the causal attention, GELU and the cached
 * attention with fused multiply-adds; these stay as the fallback (and GELU for sizes that are not a
 * multiple of 8).
 *
 * Writing into an input tensor (the attention's cache) breaks tfjs's rule that tensors are
 * immutable. It is safe here because the buffers belong to one decoder (CachedDecoder in
 * sampler.ts), which never hands them out, and a step writes only position length-1, which no
 * earlier step has read (reads stop below length).
 *
 * The kernels are the WebAssembly text below, assembled by wabt when the wasm backend starts and
 * instantiated on the backend's own memory, so they read and write tensors where they lie (at the
 * memory offsets of the backend's data map). They reach into the backend's internals, so they are
 * installed only on the tfjs-backend-wasm version they were written against (4.x) and only on its
 * single-threaded build (whose memory is not shared). They work 4 floats at a time, so they take
 * rows whose length is a multiple of 4 (head size, model width); elsewhere GPT and the sampler use
 * tfjs ops. test/policy/simdKernels.test.ts checks each against the tfjs ops it replaces.
 */
import * as tf from '@tensorflow/tfjs';
import wabtInit from 'wabt';
import { freeUnlessStuck, helperPool, helpersFor, runCut } from './kernelThreads.ts';
import { memoryImport } from './sharedHeap.ts';

/** The WebAssembly JS API, a Node global that the ES library this project compiles against does not type. */
declare const WebAssembly: {
  Memory: abstract new (...args: never[]) => { buffer: ArrayBuffer | SharedArrayBuffer };
  compile(bytes: Uint8Array): Promise<object>;
  instantiate(module: object, imports: object): Promise<{ exports: object }>;
};
type WasmMemory = InstanceType<typeof WebAssembly.Memory>;

export const KERNELS = {
  attention: 'RxrlCachedAttention',
  layerNorm: 'RxrlLayerNorm',
  layerNormGrad: 'RxrlLayerNormGrad',
  columnSum: 'RxrlColumnSum',
  adamw: 'RxrlAdamW',
  gelu: 'RxrlGelu',
  geluGrad: 'RxrlGeluGrad',
  causalAttention: 'RxrlCausalAttention',
  causalAttentionGrad: 'RxrlCausalAttentionGrad',
  decodeLayer: 'RxrlDecodeLayer',
} as const;

/**
 * The loops of the causal attention kernels: over every head (b, h) and query i of the
 * [B*T, H*hd] layout, with $base (the byte offset of row b*T, head h), $iOff ($base plus i rows)
 * and $pRow (the address of P[b, h, i, 0]) set before `body`.
 */
function forEachQuery(body: string): string {
  return `
    (block $bDone (loop $bLoop
      (br_if $bDone (i32.ge_u (local.get $b) (local.get $B)))
      (local.set $h (i32.const 0))
      (block $hDone (loop $hLoop
        (br_if $hDone (i32.ge_u (local.get $h) (local.get $H)))
        (local.set $base (i32.add (i32.mul (i32.mul (local.get $b) (local.get $T)) (local.get $rowBytes))
                                  (i32.mul (local.get $h) (local.get $hdBytes))))
        (local.set $i (i32.const 0))
        (block $iDone (loop $iLoop
          (br_if $iDone (i32.ge_u (local.get $i) (local.get $T)))
          (local.set $iOff (i32.add (local.get $base) (i32.mul (local.get $i) (local.get $rowBytes))))
          (local.set $pRow (i32.add (local.get $p) (i32.shl
            (i32.mul (i32.add (i32.mul (i32.add (i32.mul (local.get $b) (local.get $H)) (local.get $h)) (local.get $T)) (local.get $i))
                     (local.get $T))
            (i32.const 2))))
${body}
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $iLoop)))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $hLoop)))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br $bLoop)))`;
}

/**
 * WAT: `by4` for each block of 4 keys j..j+3 <= i (the keys causal query i sees), then `by1` for each
 * key left; $j is the key.
 */
export function keysUpToQuery(by4: string, by1: string): string {
  return `
          (local.set $j (i32.const 0))
          (block $by4Done (loop $by4
            (br_if $by4Done (i32.gt_u (i32.add (local.get $j) (i32.const 3)) (local.get $i)))
            ${by4}
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $by4)))${restOfKeys(by1)}`;
}

/** WAT: `body` for each key j <= i, one at a time, in order. */
function eachKey(body: string): string {
  return `
          (local.set $j (i32.const 0))${restOfKeys(body)}`;
}

/** WAT: `body` for each key from $j to i, one at a time. */
function restOfKeys(body: string): string {
  return `
          (block $by1Done (loop $by1
            (br_if $by1Done (i32.gt_u (local.get $j) (local.get $i)))
            ${body}
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $by1)))`;
}

/** WAT: `body` for each 16-byte group $d of a head's hd floats. */
function overHead(body: string): string {
  return `
            (local.set $d (i32.const 0))
            (block $laneDone (loop $lane
              (br_if $laneDone (i32.ge_u (local.get $d) (local.get $hdBytes)))
              ${body}
              (local.set $d (i32.add (local.get $d) (i32.const 16)))
              (br $lane)))`;
}

/** WAT: the address of key j's head-h row of `matrix` ([B*T, H*hd]). */
function keyRow(matrix: string): string {
  return `(i32.add (local.get ${matrix}) (i32.add (local.get $base) (i32.mul (local.get $j) (local.get $rowBytes))))`;
}

/** WAT: the address of float j of a row at `row` (a P row or the scratch). */
function pAt(row: string): string {
  return `(i32.add (local.get ${row}) (i32.shl (local.get $j) (i32.const 2)))`;
}

/** WAT: the address of lane group $d at byte offset `offset` of `matrix`. */
function lane(matrix: string, offset: string): string {
  return `(i32.add (local.get ${matrix}) (i32.add (local.get ${offset}) (local.get $d)))`;
}

/**
 * The unrolled body of causalAttentionGrad's 4-key block for key j + n: dq_i += dS[i, j+n] k_j+n (in
 * $acc), dk_j+n += dS[i, j+n] q_i, dv_j+n += P[i, j+n] dy_i; $at steps from key to key.
 */
function keyGradient(n: number): string {
  return `
              ;; key j + ${n}
              ${n > 0 ? '(local.set $at (i32.add (local.get $at) (local.get $rowBytes)))' : ''}
              (local.set $acc (f32x4.add (local.get $acc)
                (f32x4.mul (local.get $s${n}) (v128.load (i32.add (local.get $k) (local.get $at))))))
              (v128.store (i32.add (local.get $dk) (local.get $at))
                (f32x4.add (v128.load (i32.add (local.get $dk) (local.get $at))) (f32x4.mul (local.get $s${n}) (local.get $qv))))
              (v128.store (i32.add (local.get $dv) (local.get $at))
                (f32x4.add (v128.load (i32.add (local.get $dv) (local.get $at))) (f32x4.mul (local.get $a${n}) (local.get $dyv))))`;
}

/** The scalars of one AdamW update, in the order the kernel takes them. */
const ADAMW_SCALARS = [
  'gradScale',
  'beta1',
  'oneMinusBeta1',
  'beta2',
  'oneMinusBeta2',
  'c1',
  'c2',
  'epsilon',
  'weightDecay',
  'learningRate',
] as const;
/** What adamwStep takes: the kernel's scalars but 1 - beta1 and 1 - beta2, which it derives. */
type AdamWScalars = Omit<Record<(typeof ADAMW_SCALARS)[number], number>, 'oneMinusBeta1' | 'oneMinusBeta2'>;

/**
 * WAT: AdamW's update (src/learner/adamw.ts) in one pass over n floats instead of about 15 tfjs
 * kernels (each its own pass over the parameter): g' = g gradScale; m' = beta1 m + (1 - beta1) g';
 * v' = beta2 v + (1 - beta2) g'^2; p' = p - lr ((m'/c1) / (sqrt(v'/c2) + eps) + wd p), without the wd
 * term where $decay is 0. The same float32 operations in the same order as those kernels, so the same
 * values: 4 floats at a time, then one at a time.
 */
const ADAMW_WAT = (() => {
  /** One step over 4 floats (f32x4: locals $gv, $mv, ...) or one (f32: $gs, $ms, ...) at $at. */
  const step = (type: 'f32x4' | 'f32'): string => {
    const [load, store, suffix, scalar] =
      type === 'f32x4'
        ? ['v128.load', 'v128.store', 'v', (k: string) => `$${k}V`]
        : ['f32.load', 'f32.store', 's', (k: string) => `$${k}`];
    const op = (name: string, ...args: string[]): string => `(${type}.${name} ${args.join(' ')})`;
    const x = (name: string): string => `(${load} (i32.add (local.get $${name}) (local.get $at)))`;
    const k = (name: (typeof ADAMW_SCALARS)[number]): string => `(local.get ${scalar(name)})`;
    const get = (name: string): string => `(local.get $${name}${suffix})`;
    const set = (name: string, value: string): string => `(local.set $${name}${suffix} ${value})`;
    return `
        ${set('g', op('mul', x('g'), k('gradScale')))}
        ${set('m', op('add', op('mul', x('m'), k('beta1')), op('mul', get('g'), k('oneMinusBeta1'))))}
        ${set('v', op('add', op('mul', x('v'), k('beta2')), op('mul', op('mul', get('g'), get('g')), k('oneMinusBeta2'))))}
        ${set('u', op('div', op('div', get('m'), k('c1')), op('add', op('sqrt', op('div', get('v'), k('c2'))), k('epsilon'))))}
        (if (local.get $decay) (then ${set('u', op('add', get('u'), op('mul', x('p'), k('weightDecay'))))}))
        (${store} (i32.add (local.get $mOut) (local.get $at)) ${get('m')})
        (${store} (i32.add (local.get $vOut) (local.get $at)) ${get('v')})
        (${store} (i32.add (local.get $pOut) (local.get $at)) ${op('sub', x('p'), op('mul', get('u'), k('learningRate')))})`;
  };
  return `
  (func (export "adamw") (param $p i32) (param $g i32) (param $m i32) (param $v i32) (param $pOut i32) (param $mOut i32)
    (param $vOut i32) (param $n i32) (param $decay i32)
    ${ADAMW_SCALARS.map((name) => `(param $${name} f32)`).join(' ')}
    ${ADAMW_SCALARS.map((name) => `(local $${name}V v128)`).join(' ')}
    (local $at i32) (local $end i32) (local $gv v128) (local $mv v128) (local $vv v128) (local $uv v128)
    (local $gs f32) (local $ms f32) (local $vs f32) (local $us f32)
    ${ADAMW_SCALARS.map((name) => `(local.set $${name}V (f32x4.splat (local.get $${name})))`).join('\n    ')}
    (local.set $end (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (block $vDone (loop $vLoop
      (br_if $vDone (i32.ge_u (local.get $at) (local.get $end)))${step('f32x4')}
      (local.set $at (i32.add (local.get $at) (i32.const 16)))
      (br $vLoop)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $sDone (loop $sLoop
      (br_if $sDone (i32.ge_u (local.get $at) (local.get $end)))${step('f32')}
      (local.set $at (i32.add (local.get $at) (i32.const 4)))
      (br $sLoop))))`;
})();

/**
 * WAT: decoding's softmax over a head's $len scores in $scratch (padded to a multiple of 4), from $s = 0
 * and their max in $maxv: `expStep` turns the 4 scores at $at into e^(score - max) (4 at a time over
 * the padding too); then they are summed one at a time, in order (so a row's result does not depend on
 * its left padding), and scaled by 1/sum.
 */
export function scratchSoftmax(expStep: string): string {
  return `
        (block $eDone (loop $eLoop
          (br_if $eDone (i32.ge_u (local.get $s) (local.get $len)))
          (local.set $at (i32.add (local.get $scratch) (i32.shl (local.get $s) (i32.const 2))))
          ${expStep}
          (local.set $s (i32.add (local.get $s) (i32.const 4)))
          (br $eLoop)))
        (local.set $sum (f32.const 0))
        (local.set $s (i32.const 0))
        (block $sumDone (loop $sumLoop
          (br_if $sumDone (i32.ge_u (local.get $s) (local.get $len)))
          (local.set $sum (f32.add (local.get $sum)
            (f32.load (i32.add (local.get $scratch) (i32.shl (local.get $s) (i32.const 2))))))
          (local.set $s (i32.add (local.get $s) (i32.const 1)))
          (br $sumLoop)))
        (local.set $maxv (f32x4.splat (f32.div (f32.const 1) (local.get $sum))))
        (local.set $s (i32.const 0))
        (block $nDone (loop $nLoop
          (br_if $nDone (i32.ge_u (local.get $s) (local.get $len)))
          (local.set $at (i32.add (local.get $scratch) (i32.shl (local.get $s) (i32.const 2))))
          (v128.store (local.get $at) (f32x4.mul (v128.load (local.get $at)) (local.get $maxv)))
          (local.set $s (i32.add (local.get $s) (i32.const 4)))
          (br $nLoop)))`;
}

/**
 * WAT: `body` for each head (b, h) of decoding's attention (RxrlCachedAttention, here and in
 * gemmKernel.ts), with $bh, $qRow, $kRow, $vRow (the head's query and cache rows) and $biasRow set,
 * after this step's key and value are written to row len-1 of the head's cache.
 */
export function forEachCachedHead(body: string): string {
  return `
    (block $bDone (loop $bLoop
      (br_if $bDone (i32.ge_u (local.get $b) (local.get $B)))
      (local.set $biasRow (i32.add (local.get $bias) (i32.shl (i32.mul (local.get $b) (local.get $len)) (i32.const 2))))
      (local.set $h (i32.const 0))
      (block $hDone (loop $hLoop
        (br_if $hDone (i32.ge_u (local.get $h) (local.get $H)))
        (local.set $bh (i32.add (i32.mul (local.get $b) (local.get $H)) (local.get $h)))
        (local.set $qRow (i32.add (local.get $q) (i32.mul (local.get $bh) (local.get $rowBytes))))
        (local.set $kRow (i32.add (local.get $kc) (i32.mul (i32.mul (local.get $bh) (local.get $cap)) (local.get $rowBytes))))
        (local.set $vRow (i32.add (local.get $vc) (i32.mul (i32.mul (local.get $bh) (local.get $cap)) (local.get $rowBytes))))
        ;; This step's key and value go to row len-1 of the head's cache.
        (memory.copy
          (i32.add (local.get $kRow) (i32.mul (i32.sub (local.get $len) (i32.const 1)) (local.get $rowBytes)))
          (i32.add (local.get $kNew) (i32.mul (local.get $bh) (local.get $rowBytes)))
          (local.get $rowBytes))
        (memory.copy
          (i32.add (local.get $vRow) (i32.mul (i32.sub (local.get $len) (i32.const 1)) (local.get $rowBytes)))
          (i32.add (local.get $vNew) (i32.mul (local.get $bh) (local.get $rowBytes)))
          (local.get $rowBytes))
${body}
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $hLoop)))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br $bLoop)))`;
}

/**
 * WAT: $exp4, e^x for x <= 0 (softmax's arguments), 4 lanes at a time.
 */
const EXP4_WAT = `
  ;; e^x for x <= 0 (softmax's arguments), 4 lanes at a time: x = n ln2 + r with |r| <= ln2/2 (ln2 in
  ;; two parts, as Cephes' expf), e^r by its Taylor series to r^7 (truncation error < 6e-9), times
  ;; 2^n built in the exponent bits. Below -87, 0 (2^-126 is the smallest normal float). Each lane
  ;; is the same IEEE computation, so a value does not depend on its lane.
  (func $exp4 (param $x v128) (result v128)
    (local $n v128) (local $r v128) (local $p v128)
    (local.set $n (f32x4.nearest (f32x4.mul (local.get $x) (v128.const f32x4 1.44269504 1.44269504 1.44269504 1.44269504))))
    (local.set $r (f32x4.add
      (f32x4.sub (local.get $x) (f32x4.mul (local.get $n) (v128.const f32x4 0.693359375 0.693359375 0.693359375 0.693359375)))
      (f32x4.mul (local.get $n) (v128.const f32x4 2.12194440e-4 2.12194440e-4 2.12194440e-4 2.12194440e-4))))
    (local.set $p (f32x4.add (v128.const f32x4 1 1 1 1)
      (f32x4.mul (local.get $r) (v128.const f32x4 0.142857143 0.142857143 0.142857143 0.142857143))))
    (local.set $p (f32x4.add (v128.const f32x4 1 1 1 1) (f32x4.mul (f32x4.mul (local.get $r)
      (v128.const f32x4 0.166666667 0.166666667 0.166666667 0.166666667)) (local.get $p))))
    (local.set $p (f32x4.add (v128.const f32x4 1 1 1 1) (f32x4.mul (f32x4.mul (local.get $r)
      (v128.const f32x4 0.2 0.2 0.2 0.2)) (local.get $p))))
    (local.set $p (f32x4.add (v128.const f32x4 1 1 1 1) (f32x4.mul (f32x4.mul (local.get $r)
      (v128.const f32x4 0.25 0.25 0.25 0.25)) (local.get $p))))
    (local.set $p (f32x4.add (v128.const f32x4 1 1 1 1) (f32x4.mul (f32x4.mul (local.get $r)
      (v128.const f32x4 0.333333333 0.333333333 0.333333333 0.333333333)) (local.get $p))))
    (local.set $p (f32x4.add (v128.const f32x4 1 1 1 1) (f32x4.mul (f32x4.mul (local.get $r)
      (v128.const f32x4 0.5 0.5 0.5 0.5)) (local.get $p))))
    (local.set $p (f32x4.add (v128.const f32x4 1 1 1 1) (f32x4.mul (local.get $r) (local.get $p))))
    (v128.andnot
      (f32x4.mul (local.get $p) (i32x4.shl
        (i32x4.add (i32x4.trunc_sat_f32x4_s (local.get $n)) (v128.const i32x4 127 127 127 127))
        (i32.const 23)))
      (f32x4.lt (local.get $x) (v128.const f32x4 -87 -87 -87 -87))))`;

/**
 * The attention attends every head [B, H] in order. A head's query, key and value rows are hd
 * floats; its cache holds `capacity` such rows. Dot products, exponentials and the weighted sum run
 * 4 lanes at a time (f32x4), but the softmax's sum runs one score at a time, in order: a row's result
 * then does not depend on where its columns fall in SIMD lanes, so not on how much left padding the
 * batch gives it (a masked column's exponential is exactly 0), and a row samples the same whatever
 * the batch. With tfjs's softmax on these scores it did not: probabilities moved in the last bit
 * with the padding.
 */
const kernelsWat = (shared: boolean): string => `
(module
  ${memoryImport(shared)}
  ${EXP4_WAT}
  (func (export "attend")
    (param $q i32) (param $kNew i32) (param $vNew i32) (param $kc i32) (param $vc i32) (param $bias i32)
    (param $scratch i32) (param $out i32)
    (param $B i32) (param $H i32) (param $cap i32) (param $len i32) (param $hd i32) (param $scale f32)
    (local $b i32) (local $h i32) (local $bh i32) (local $rowBytes i32) (local $qRow i32) (local $kRow i32)
    (local $vRow i32) (local $biasRow i32) (local $outRow i32) (local $s i32) (local $d i32) (local $at i32)
    (local $acc v128) (local $maxv v128) (local $e f32) (local $max f32) (local $sum f32)
    (local.set $rowBytes (i32.shl (local.get $hd) (i32.const 2)))
    ${forEachCachedHead(`        ;; scratch[s] = scale * q.K[s] + bias[s], and their max.
        (local.set $max (f32.const -inf))
        (local.set $at (local.get $kRow))
        (local.set $s (i32.const 0))
        (block $sDone (loop $sLoop
          (br_if $sDone (i32.ge_u (local.get $s) (local.get $len)))
          (local.set $e (f32.add
            (f32.mul (call $dot (local.get $qRow) (local.get $at) (local.get $rowBytes)) (local.get $scale))
            (f32.load (i32.add (local.get $biasRow) (i32.shl (local.get $s) (i32.const 2))))))
          (f32.store (i32.add (local.get $scratch) (i32.shl (local.get $s) (i32.const 2))) (local.get $e))
          (local.set $max (f32.max (local.get $max) (local.get $e)))
          (local.set $at (i32.add (local.get $at) (local.get $rowBytes)))
          (local.set $s (i32.add (local.get $s) (i32.const 1)))
          (br $sLoop)))
        ;; scratch[s] = e^(scratch[s] - max), 4 at a time (the scratch is padded to a multiple of 4);
        ;; summed one at a time, in order; then times 1/sum.
        (local.set $maxv (f32x4.splat (local.get $max)))
        (local.set $s (i32.const 0))
${scratchSoftmax(`(v128.store (local.get $at) (call $exp4 (f32x4.sub (v128.load (local.get $at)) (local.get $maxv))))`)}
        ;; out = sum_s scratch[s] V[s], 4 lanes of hd at a time.
        (local.set $outRow (i32.add (local.get $out) (i32.mul (local.get $bh) (local.get $rowBytes))))
        (local.set $d (i32.const 0))
        (block $vDone (loop $vLoop
          (br_if $vDone (i32.ge_u (local.get $d) (local.get $rowBytes)))
          (local.set $acc (v128.const f32x4 0 0 0 0))
          (local.set $at (i32.add (local.get $vRow) (local.get $d)))
          (local.set $s (i32.const 0))
          (block $wDone (loop $wLoop
            (br_if $wDone (i32.ge_u (local.get $s) (local.get $len)))
            (local.set $acc (f32x4.add (local.get $acc)
              (f32x4.mul
                (f32x4.splat (f32.load (i32.add (local.get $scratch) (i32.shl (local.get $s) (i32.const 2)))))
                (v128.load (local.get $at)))))
            (local.set $at (i32.add (local.get $at) (local.get $rowBytes)))
            (local.set $s (i32.add (local.get $s) (i32.const 1)))
            (br $wLoop)))
          (v128.store (i32.add (local.get $outRow) (local.get $d)) (local.get $acc))
          (local.set $d (i32.add (local.get $d) (i32.const 16)))
          (br $vLoop)))`)})

  ;; The lane sums of four vectors, as one vector [sum a, sum b, sum c, sum d] (a 4 x 4 transpose-add).
  (func $hsum4 (param $a v128) (param $b v128) (param $c v128) (param $d v128) (result v128)
    (local $ab v128) (local $cd v128)
    (local.set $ab (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a) (local.get $b))
      (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a) (local.get $b))))
    (local.set $cd (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $c) (local.get $d))
      (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $c) (local.get $d))))
    (f32x4.add
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $ab) (local.get $cd))
      (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $ab) (local.get $cd))))

  ;; x . y over the first "bytes" (a multiple of 16) of two rows, 4 lanes at a time, the lanes summed last.
  (func $dot (param $x i32) (param $y i32) (param $bytes i32) (result f32)
    (local $d i32) (local $acc v128)
    (block $done (loop $loop
      (br_if $done (i32.ge_u (local.get $d) (local.get $bytes)))
      (local.set $acc (f32x4.add (local.get $acc)
        (f32x4.mul (v128.load (i32.add (local.get $x) (local.get $d))) (v128.load (i32.add (local.get $y) (local.get $d))))))
      (local.set $d (i32.add (local.get $d) (i32.const 16)))
      (br $loop)))
    (call $hsum (local.get $acc)))

  ;; [x . r0, x . r1, x . r2, x . r3] for the 4 rows r_n = rows + n stride, over the first "bytes" of each.
  (func $dot4 (param $x i32) (param $rows i32) (param $stride i32) (param $bytes i32) (result v128)
    (local $d i32) (local $at i32) (local $xv v128) (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (block $done (loop $loop
      (br_if $done (i32.ge_u (local.get $d) (local.get $bytes)))
      (local.set $xv (v128.load (i32.add (local.get $x) (local.get $d))))
      (local.set $at (i32.add (local.get $rows) (local.get $d)))
      (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $xv) (v128.load (local.get $at)))))
      (local.set $at (i32.add (local.get $at) (local.get $stride)))
      (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $xv) (v128.load (local.get $at)))))
      (local.set $at (i32.add (local.get $at) (local.get $stride)))
      (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $xv) (v128.load (local.get $at)))))
      (local.set $at (i32.add (local.get $at) (local.get $stride)))
      (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $xv) (v128.load (local.get $at)))))
      (local.set $d (i32.add (local.get $d) (i32.const 16)))
      (br $loop)))
    (call $hsum4 (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)))

  ;; The sum of a vector's 4 lanes.
  (func $hsum (param $v v128) (result f32)
    (f32.add
      (f32.add (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
      (f32.add (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))

  ;; Per row of x [R, d]: mean, rstd = 1/sqrt(mean((x - mean)^2) + eps), xhat = (x - mean) rstd,
  ;; y = xhat g + b. Writes y and xhat [R, d] and rstd [R].
  (func (export "layerNorm")
    (param $x i32) (param $g i32) (param $b i32) (param $y i32) (param $xhat i32) (param $rstd i32)
    (param $R i32) (param $d i32) (param $eps f32)
    (local $r i32) (local $c i32) (local $row i32) (local $rowBytes i32) (local $acc v128) (local $t v128)
    (local $mean v128) (local $rs v128) (local $width f32) (local $var f32)
    (local.set $rowBytes (i32.shl (local.get $d) (i32.const 2)))
    (local.set $width (f32.convert_i32_u (local.get $d)))
    (block $rDone (loop $rLoop
      (br_if $rDone (i32.ge_u (local.get $r) (local.get $R)))
      (local.set $row (i32.mul (local.get $r) (local.get $rowBytes)))
      (local.set $acc (v128.const f32x4 0 0 0 0))
      (local.set $c (i32.const 0))
      (block $mDone (loop $mLoop
        (br_if $mDone (i32.ge_u (local.get $c) (local.get $rowBytes)))
        (local.set $acc (f32x4.add (local.get $acc) (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $c))))))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $mLoop)))
      (local.set $mean (f32x4.splat (f32.div (call $hsum (local.get $acc)) (local.get $width))))
      (local.set $acc (v128.const f32x4 0 0 0 0))
      (local.set $c (i32.const 0))
      (block $vDone (loop $vLoop
        (br_if $vDone (i32.ge_u (local.get $c) (local.get $rowBytes)))
        (local.set $t (f32x4.sub (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $c)))) (local.get $mean)))
        (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (local.get $t) (local.get $t))))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $vLoop)))
      (local.set $var (f32.div (call $hsum (local.get $acc)) (local.get $width)))
      (local.set $rs (f32x4.splat (f32.div (f32.const 1) (f32.sqrt (f32.add (local.get $var) (local.get $eps))))))
      (f32.store (i32.add (local.get $rstd) (i32.shl (local.get $r) (i32.const 2))) (f32x4.extract_lane 0 (local.get $rs)))
      (local.set $c (i32.const 0))
      (block $oDone (loop $oLoop
        (br_if $oDone (i32.ge_u (local.get $c) (local.get $rowBytes)))
        (local.set $t (f32x4.mul
          (f32x4.sub (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $c)))) (local.get $mean))
          (local.get $rs)))
        (v128.store (i32.add (local.get $xhat) (i32.add (local.get $row) (local.get $c))) (local.get $t))
        (v128.store (i32.add (local.get $y) (i32.add (local.get $row) (local.get $c)))
          (f32x4.add (f32x4.mul (local.get $t) (v128.load (i32.add (local.get $g) (local.get $c))))
                     (v128.load (i32.add (local.get $b) (local.get $c)))))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $oLoop)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rLoop))))

  ;; LayerNorm's gradient from dy, xhat [R, d], rstd [R] and g [d]: with dxhat = dy g,
  ;; dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) per row; dg = sum_rows dy xhat;
  ;; db = sum_rows dy (accumulated row by row, in order).
  (func (export "layerNormGrad")
    (param $dy i32) (param $xhat i32) (param $rstd i32) (param $g i32) (param $dx i32) (param $dg i32)
    (param $db i32) (param $R i32) (param $d i32) (param $sums i32)
    (local $r i32) (local $c i32) (local $row i32) (local $rowBytes i32) (local $a1 v128) (local $a2 v128)
    (local $t v128) (local $h v128) (local $dyv v128) (local $m1 v128) (local $m2 v128) (local $rs v128)
    (local $width f32)
    (local.set $rowBytes (i32.shl (local.get $d) (i32.const 2)))
    (local.set $width (f32.convert_i32_u (local.get $d)))
    (if (local.get $sums) (then
      (memory.fill (local.get $dg) (i32.const 0) (local.get $rowBytes))
      (memory.fill (local.get $db) (i32.const 0) (local.get $rowBytes))))
    (block $rDone (loop $rLoop
      (br_if $rDone (i32.ge_u (local.get $r) (local.get $R)))
      (local.set $row (i32.mul (local.get $r) (local.get $rowBytes)))
      (local.set $a1 (v128.const f32x4 0 0 0 0))
      (local.set $a2 (v128.const f32x4 0 0 0 0))
      (local.set $c (i32.const 0))
      (block $mDone (loop $mLoop
        (br_if $mDone (i32.ge_u (local.get $c) (local.get $rowBytes)))
        (local.set $t (f32x4.mul (v128.load (i32.add (local.get $dy) (i32.add (local.get $row) (local.get $c))))
                                 (v128.load (i32.add (local.get $g) (local.get $c)))))
        (local.set $a1 (f32x4.add (local.get $a1) (local.get $t)))
        (local.set $a2 (f32x4.add (local.get $a2)
          (f32x4.mul (local.get $t) (v128.load (i32.add (local.get $xhat) (i32.add (local.get $row) (local.get $c)))))))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $mLoop)))
      (local.set $m1 (f32x4.splat (f32.div (call $hsum (local.get $a1)) (local.get $width))))
      (local.set $m2 (f32x4.splat (f32.div (call $hsum (local.get $a2)) (local.get $width))))
      (local.set $rs (f32x4.splat (f32.load (i32.add (local.get $rstd) (i32.shl (local.get $r) (i32.const 2))))))
      (local.set $c (i32.const 0))
      (block $oDone (loop $oLoop
        (br_if $oDone (i32.ge_u (local.get $c) (local.get $rowBytes)))
        (local.set $dyv (v128.load (i32.add (local.get $dy) (i32.add (local.get $row) (local.get $c)))))
        (local.set $h (v128.load (i32.add (local.get $xhat) (i32.add (local.get $row) (local.get $c)))))
        (local.set $t (f32x4.mul (local.get $dyv) (v128.load (i32.add (local.get $g) (local.get $c)))))
        (v128.store (i32.add (local.get $dx) (i32.add (local.get $row) (local.get $c)))
          (f32x4.mul (local.get $rs)
            (f32x4.sub (f32x4.sub (local.get $t) (local.get $m1)) (f32x4.mul (local.get $h) (local.get $m2)))))
        (if (local.get $sums) (then
          (v128.store (i32.add (local.get $dg) (local.get $c))
            (f32x4.add (v128.load (i32.add (local.get $dg) (local.get $c))) (f32x4.mul (local.get $dyv) (local.get $h))))
          (v128.store (i32.add (local.get $db) (local.get $c))
            (f32x4.add (v128.load (i32.add (local.get $db) (local.get $c))) (local.get $dyv)))))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $oLoop)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rLoop))))

  ;; What layerNormGrad sums into dg and db with $sums, alone, for C columns of dy and xhat (rows xRow
  ;; bytes apart): dg = sum_r dy xhat, db = sum_r dy, the same operations in the same (row) order.
  (func (export "layerNormGradSums")
    (param $dy i32) (param $xhat i32) (param $dg i32) (param $db i32) (param $R i32) (param $C i32) (param $xRow i32)
    (local $r i32) (local $c i32) (local $at i32) (local $width i32) (local $dyv v128)
    (local.set $width (i32.shl (local.get $C) (i32.const 2)))
    (memory.fill (local.get $dg) (i32.const 0) (local.get $width))
    (memory.fill (local.get $db) (i32.const 0) (local.get $width))
    (block $rDone (loop $rLoop
      (br_if $rDone (i32.ge_u (local.get $r) (local.get $R)))
      (local.set $c (i32.const 0))
      (block $cDone (loop $cLoop
        (br_if $cDone (i32.ge_u (local.get $c) (local.get $width)))
        (local.set $dyv (v128.load (i32.add (local.get $dy) (i32.add (local.get $at) (local.get $c)))))
        (v128.store (i32.add (local.get $dg) (local.get $c))
          (f32x4.add (v128.load (i32.add (local.get $dg) (local.get $c)))
            (f32x4.mul (local.get $dyv) (v128.load (i32.add (local.get $xhat) (i32.add (local.get $at) (local.get $c)))))))
        (v128.store (i32.add (local.get $db) (local.get $c))
          (f32x4.add (v128.load (i32.add (local.get $db) (local.get $c))) (local.get $dyv)))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $cLoop)))
      (local.set $at (i32.add (local.get $at) (local.get $xRow)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rLoop))))

  ;; GELU in its sigmoid form, elementwise over n floats (a multiple of 4): s = sigmoid(1.702 x),
  ;; y = x s. The sigmoid takes e = e^-|t| (t = 1.702 x, so e^... never overflows): 1 / (1 + e) for
  ;; t >= 0, e / (1 + e) below.
  (func (export "gelu") (param $x i32) (param $y i32) (param $s i32) (param $n i32)
    (local $at i32) (local $end i32) (local $xv v128) (local $t v128) (local $e v128) (local $r v128)
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $done (loop $loop
      (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
      (local.set $xv (v128.load (i32.add (local.get $x) (local.get $at))))
      (local.set $t (f32x4.mul (local.get $xv) (v128.const f32x4 1.702 1.702 1.702 1.702)))
      (local.set $e (call $exp4 (f32x4.neg (f32x4.abs (local.get $t)))))
      (local.set $r (f32x4.div (v128.const f32x4 1 1 1 1) (f32x4.add (v128.const f32x4 1 1 1 1) (local.get $e))))
      (local.set $r (v128.bitselect (local.get $r) (f32x4.mul (local.get $e) (local.get $r))
        (f32x4.ge (local.get $t) (v128.const f32x4 0 0 0 0))))
      (v128.store (i32.add (local.get $s) (local.get $at)) (local.get $r))
      (v128.store (i32.add (local.get $y) (local.get $at)) (f32x4.mul (local.get $xv) (local.get $r)))
      (local.set $at (i32.add (local.get $at) (i32.const 16)))
      (br $loop))))

  ;; GELU's gradient from dy, x and s = sigmoid(1.702 x): dx = dy (s + 1.702 x s (1 - s)).
  ;; (The constants are locals: V8 builds a v128.const in three instructions wherever it is used.)
  (func (export "geluGrad") (param $dy i32) (param $x i32) (param $s i32) (param $dx i32) (param $n i32)
    (local $at i32) (local $end i32) (local $sv v128) (local $k v128) (local $one v128)
    (local.set $k (v128.const f32x4 1.702 1.702 1.702 1.702))
    (local.set $one (v128.const f32x4 1 1 1 1))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $done (loop $loop
      (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
      (local.set $sv (v128.load (i32.add (local.get $s) (local.get $at))))
      (v128.store (i32.add (local.get $dx) (local.get $at))
        (f32x4.mul (v128.load (i32.add (local.get $dy) (local.get $at)))
          (f32x4.add (local.get $sv)
            (f32x4.mul
              (f32x4.mul (v128.load (i32.add (local.get $x) (local.get $at))) (local.get $k))
              (f32x4.mul (local.get $sv) (f32x4.sub (local.get $one) (local.get $sv)))))))
      (local.set $at (i32.add (local.get $at) (i32.const 16)))
      (br $loop))))

  ;; out[c] = sum_r x[r, c] for x [R, C] (rows xRow bytes apart), accumulated row by row.
  (func (export "columnSum") (param $x i32) (param $out i32) (param $R i32) (param $C i32) (param $xRow i32)
    (local $r i32) (local $c i32) (local $rowBytes i32) (local $at i32)
    (local.set $rowBytes (i32.shl (local.get $C) (i32.const 2)))
    (memory.fill (local.get $out) (i32.const 0) (local.get $rowBytes))
    (local.set $at (local.get $x))
    (block $rDone (loop $rLoop
      (br_if $rDone (i32.ge_u (local.get $r) (local.get $R)))
      (local.set $c (i32.const 0))
      (block $cDone (loop $cLoop
        (br_if $cDone (i32.ge_u (local.get $c) (local.get $rowBytes)))
        (v128.store (i32.add (local.get $out) (local.get $c))
          (f32x4.add (v128.load (i32.add (local.get $out) (local.get $c))) (v128.load (i32.add (local.get $at) (local.get $c)))))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $cLoop)))
      (local.set $at (i32.add (local.get $at) (local.get $xRow)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rLoop))))

${ADAMW_WAT}

  ;; Causal self-attention over T tokens for training, per (b, h): P[i, j] = softmax_j<=i(scale q_i . k_j)
  ;; and y_i = sum_j<=i P[i, j] v_j. q, k, v and y are [B*T, H*hd] (row b*T+i, head h at column h*hd:
  ;; the layout of the projections, so no transposes); P is [B, H, T, T], written for j <= i only
  ;; (the gradient reads it there). Keys after the query are skipped, not masked: half the work.
  (func (export "causalAttention")
    (param $q i32) (param $k i32) (param $v i32) (param $y i32) (param $p i32)
    (param $B i32) (param $T i32) (param $H i32) (param $hd i32) (param $scale f32)
    (local $b i32) (local $h i32) (local $i i32) (local $j i32) (local $d i32) (local $rowBytes i32)
    (local $hdBytes i32) (local $base i32) (local $pRow i32) (local $iOff i32) (local $at i32)
    (local $pj v128) (local $maxv v128) (local $qv v128) (local $a0 v128) (local $a1 v128)
    (local $a2 v128) (local $a3 v128) (local $e f32) (local $max f32) (local $sum f32)
    (local.set $hdBytes (i32.shl (local.get $hd) (i32.const 2)))
    (local.set $rowBytes (i32.mul (local.get $H) (local.get $hdBytes)))
    (memory.fill (local.get $y) (i32.const 0) (i32.mul (i32.mul (local.get $B) (local.get $T)) (local.get $rowBytes)))
${forEachQuery(`
          ;; scores and their max
          (local.set $maxv (v128.const f32x4 -inf -inf -inf -inf))
          (local.set $max (f32.const -inf))
${keysUpToQuery(
  `(local.set $qv (f32x4.mul
              (call $dot4 (i32.add (local.get $q) (local.get $iOff)) ${keyRow('$k')} (local.get $rowBytes) (local.get $hdBytes))
              (f32x4.splat (local.get $scale))))
            (v128.store ${pAt('$pRow')} (local.get $qv))
            (local.set $maxv (f32x4.max (local.get $maxv) (local.get $qv)))`,
  `(local.set $e (f32.mul
              (call $dot (i32.add (local.get $q) (local.get $iOff)) ${keyRow('$k')} (local.get $hdBytes))
              (local.get $scale)))
            (f32.store ${pAt('$pRow')} (local.get $e))
            (local.set $max (f32.max (local.get $max) (local.get $e)))`,
)}
          (local.set $max (f32.max (local.get $max) (f32.max
            (f32.max (f32x4.extract_lane 0 (local.get $maxv)) (f32x4.extract_lane 1 (local.get $maxv)))
            (f32.max (f32x4.extract_lane 2 (local.get $maxv)) (f32x4.extract_lane 3 (local.get $maxv))))))
          ;; exponentials (4 at a time while 4 remain, one at a time after: the same per-lane arithmetic)
          (local.set $pj (f32x4.splat (local.get $max)))
${keysUpToQuery(
  `(v128.store ${pAt('$pRow')} (call $exp4 (f32x4.sub (v128.load ${pAt('$pRow')}) (local.get $pj))))`,
  `(f32.store ${pAt('$pRow')} (f32x4.extract_lane 0
              (call $exp4 (f32x4.splat (f32.sub (f32.load ${pAt('$pRow')}) (local.get $max))))))`,
)}
          ;; their sum in order, then P[i, j] = e_j / sum
          (local.set $sum (f32.const 0))
${eachKey(`(local.set $sum (f32.add (local.get $sum) (f32.load ${pAt('$pRow')})))`)}
          (local.set $sum (f32.div (f32.const 1) (local.get $sum)))
${eachKey(`(f32.store ${pAt('$pRow')} (f32.mul (f32.load ${pAt('$pRow')}) (local.get $sum)))`)}
          ;; y_i = sum_j P[i, j] v_j
${keysUpToQuery(
  `(local.set $a0 (f32x4.splat (f32.load ${pAt('$pRow')})))
            (local.set $a1 (f32x4.splat (f32.load offset=4 ${pAt('$pRow')})))
            (local.set $a2 (f32x4.splat (f32.load offset=8 ${pAt('$pRow')})))
            (local.set $a3 (f32x4.splat (f32.load offset=12 ${pAt('$pRow')})))
            (local.set $at ${keyRow('$v')})
${overHead(`(v128.store ${lane('$y', '$iOff')}
                (f32x4.add (v128.load ${lane('$y', '$iOff')})
                  (f32x4.add
                    (f32x4.add
                      (f32x4.mul (local.get $a0) (v128.load (i32.add (local.get $at) (local.get $d))))
                      (f32x4.mul (local.get $a1) (v128.load (i32.add (i32.add (local.get $at) (local.get $rowBytes)) (local.get $d)))))
                    (f32x4.add
                      (f32x4.mul (local.get $a2)
                        (v128.load (i32.add (i32.add (local.get $at) (i32.shl (local.get $rowBytes) (i32.const 1))) (local.get $d))))
                      (f32x4.mul (local.get $a3)
                        (v128.load (i32.add (i32.add (local.get $at) (i32.mul (local.get $rowBytes) (i32.const 3))) (local.get $d))))))))`)}`,
  `(local.set $pj (f32x4.splat (f32.load ${pAt('$pRow')})))
            (local.set $at ${keyRow('$v')})
${overHead(`(v128.store ${lane('$y', '$iOff')}
                (f32x4.add (v128.load ${lane('$y', '$iOff')})
                  (f32x4.mul (local.get $pj) (v128.load (i32.add (local.get $at) (local.get $d))))))`)}`,
)}
`)})

  ;; The gradient of causalAttention from dy [B*T, H*hd] and its P: with dP[i, j] = dy_i . v_j and
  ;; dS[i, j] = P[i, j] (dP[i, j] - sum_j' P[i, j'] dP[i, j']), dq_i = scale sum_j dS[i, j] k_j,
  ;; dk_j = scale sum_i dS[i, j] q_i, dv_j = sum_i P[i, j] dy_i (j <= i). scratch holds one row of dS.
  (func (export "causalAttentionGrad")
    (param $dy i32) (param $q i32) (param $k i32) (param $v i32) (param $p i32) (param $scratch i32)
    (param $dq i32) (param $dk i32) (param $dv i32)
    (param $B i32) (param $T i32) (param $H i32) (param $hd i32) (param $scale f32)
    (local $b i32) (local $h i32) (local $i i32) (local $j i32) (local $d i32) (local $rowBytes i32)
    (local $hdBytes i32) (local $base i32) (local $pRow i32) (local $iOff i32) (local $jOff i32) (local $at i32)
    (local $acc v128) (local $sj v128) (local $pj v128) (local $qv v128) (local $dyv v128) (local $a0 v128)
    (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $s0 v128) (local $s1 v128) (local $s2 v128)
    (local $s3 v128) (local $D f32) (local $bytes i32)
    (local.set $hdBytes (i32.shl (local.get $hd) (i32.const 2)))
    (local.set $rowBytes (i32.mul (local.get $H) (local.get $hdBytes)))
    (local.set $bytes (i32.mul (i32.mul (local.get $B) (local.get $T)) (local.get $rowBytes)))
    (memory.fill (local.get $dq) (i32.const 0) (local.get $bytes))
    (memory.fill (local.get $dk) (i32.const 0) (local.get $bytes))
    (memory.fill (local.get $dv) (i32.const 0) (local.get $bytes))
${forEachQuery(`
          ;; scratch[j] = dP[i, j]; D = sum_j P[i, j] dP[i, j]
${keysUpToQuery(
  `(v128.store ${pAt('$scratch')}
              (call $dot4 (i32.add (local.get $dy) (local.get $iOff)) ${keyRow('$v')} (local.get $rowBytes) (local.get $hdBytes)))`,
  `(f32.store ${pAt('$scratch')}
              (call $dot (i32.add (local.get $dy) (local.get $iOff)) ${keyRow('$v')} (local.get $hdBytes)))`,
)}
          (local.set $D (f32.const 0))
${eachKey(`(local.set $D (f32.add (local.get $D) (f32.mul (f32.load ${pAt('$scratch')}) (f32.load ${pAt('$pRow')}))))`)}
          ;; scratch[j] = dS[i, j] * scale = P[i, j] (dP[i, j] - D) scale
${eachKey(`(f32.store ${pAt('$scratch')}
              (f32.mul (f32.mul (f32.load ${pAt('$pRow')}) (f32.sub (f32.load ${pAt('$scratch')}) (local.get $D)))
                       (local.get $scale)))`)}
          ;; dq_i += dS[i, j] k_j, dk_j += dS[i, j] q_i, dv_j += P[i, j] dy_i (by 4 keys: dq_i, q_i and
          ;; dy_i loaded once for the 4)
${keysUpToQuery(
  `(local.set $s0 (f32x4.splat (f32.load ${pAt('$scratch')})))
            (local.set $s1 (f32x4.splat (f32.load offset=4 ${pAt('$scratch')})))
            (local.set $s2 (f32x4.splat (f32.load offset=8 ${pAt('$scratch')})))
            (local.set $s3 (f32x4.splat (f32.load offset=12 ${pAt('$scratch')})))
            (local.set $a0 (f32x4.splat (f32.load ${pAt('$pRow')})))
            (local.set $a1 (f32x4.splat (f32.load offset=4 ${pAt('$pRow')})))
            (local.set $a2 (f32x4.splat (f32.load offset=8 ${pAt('$pRow')})))
            (local.set $a3 (f32x4.splat (f32.load offset=12 ${pAt('$pRow')})))
            (local.set $jOff (i32.add (local.get $base) (i32.mul (local.get $j) (local.get $rowBytes))))
${overHead(`(local.set $qv (v128.load ${lane('$q', '$iOff')}))
              (local.set $dyv (v128.load ${lane('$dy', '$iOff')}))
              (local.set $acc (v128.load ${lane('$dq', '$iOff')}))
              (local.set $at (i32.add (local.get $jOff) (local.get $d)))
${[0, 1, 2, 3].map(keyGradient).join('')}
              (v128.store ${lane('$dq', '$iOff')} (local.get $acc))`)}`,
  `(local.set $pj (f32x4.splat (f32.load ${pAt('$pRow')})))
            (local.set $sj (f32x4.splat (f32.load ${pAt('$scratch')})))
            (local.set $jOff (i32.add (local.get $base) (i32.mul (local.get $j) (local.get $rowBytes))))
${overHead(`(v128.store ${lane('$dq', '$iOff')}
                (f32x4.add (v128.load ${lane('$dq', '$iOff')}) (f32x4.mul (local.get $sj) (v128.load ${lane('$k', '$jOff')}))))
              (v128.store ${lane('$dk', '$jOff')}
                (f32x4.add (v128.load ${lane('$dk', '$jOff')}) (f32x4.mul (local.get $sj) (v128.load ${lane('$q', '$iOff')}))))
              (v128.store ${lane('$dv', '$jOff')}
                (f32x4.add (v128.load ${lane('$dv', '$jOff')}) (f32x4.mul (local.get $pj) (v128.load ${lane('$dy', '$iOff')}))))`)}`,
)}
`)})
)
`;

/** The attend export (RxrlCachedAttention): memory offsets, sizes and the scale. */
export type Attend = (
  q: number,
  kNew: number,
  vNew: number,
  kCache: number,
  vCache: number,
  bias: number,
  scratch: number,
  out: number,
  B: number,
  H: number,
  capacity: number,
  length: number,
  hd: number,
  scale: number,
) => void;

/** The exports of the assembled module: each takes memory offsets and sizes. */
interface Exports {
  attend: Attend;
  layerNorm(
    x: number,
    g: number,
    b: number,
    y: number,
    xhat: number,
    rstd: number,
    R: number,
    d: number,
    eps: number,
  ): void;
  layerNormGrad(
    dy: number,
    xhat: number,
    rstd: number,
    g: number,
    dx: number,
    dg: number,
    db: number,
    R: number,
    d: number,
    sums: number,
  ): void;
  layerNormGradSums(
    dy: number,
    xhat: number,
    dg: number,
    db: number,
    R: number,
    C: number,
    xRow: number,
  ): void;
  columnSum(x: number, out: number, R: number, C: number, xRow: number): void;
  adamw(
    p: number,
    g: number,
    m: number,
    v: number,
    pOut: number,
    mOut: number,
    vOut: number,
    n: number,
    decay: number,
    ...scalars: number[]
  ): void;
  gelu(x: number, y: number, s: number, n: number): void;
  geluGrad(dy: number, x: number, s: number, dx: number, n: number): void;
  causalAttention(
    q: number,
    k: number,
    v: number,
    y: number,
    p: number,
    B: number,
    T: number,
    H: number,
    hd: number,
    scale: number,
  ): void;
  causalAttentionGrad(
    dy: number,
    q: number,
    k: number,
    v: number,
    p: number,
    scratch: number,
    dq: number,
    dk: number,
    dv: number,
    B: number,
    T: number,
    H: number,
    hd: number,
    scale: number,
  ): void;
}

/** The parts of tfjs-backend-wasm's BackendWasm these kernels (and gemmKernel.ts) use. */
export interface WasmBackend {
  dataIdMap: { get(dataId: object): { memoryOffset: number }; has(dataId: object): boolean };
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  disposeData(dataId: object): boolean;
  wasm: { asm?: { memory?: WasmMemory } };
}

export type KernelArgs = {
  inputs: Record<string, tf.TensorInfo>;
  backend: unknown;
  attrs?: Record<string, unknown>;
};

let installed = false;

/**
 * Assembles the kernels and registers them on the wasm backend (call with it active); idempotent.
 * Resolves to false where they do not apply (another tfjs-backend-wasm version, or its threaded
 * build), leaving GPT and the sampler on tfjs ops.
 */
export async function installSimdKernels(wasmVersion: string): Promise<boolean> {
  if (installed) return true;
  if (!wasmVersion.startsWith('4.') || tf.getBackend() !== 'wasm') return false;
  const memory = (tf.backend() as unknown as WasmBackend).wasm.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) return false;
  const wabt = await wabtInit();
  const wat = wabt.parseWat('simdKernels.wat', kernelsWat(memory.buffer instanceof SharedArrayBuffer), {
    simd: true,
    bulk_memory: true,
    threads: true,
  });
  let binary: Uint8Array;
  try {
    binary = wat.toBinary({}).buffer;
  } finally {
    wat.destroy();
  }
  const module = await WebAssembly.compile(binary);
  const exports = (await WebAssembly.instantiate(module, { env: { memory } })).exports as unknown as Exports;
  // On a shared heap, helper threads (kernelThreads.ts) run the kernels that cut their work.
  if (memory.buffer instanceof SharedArrayBuffer)
    helperPool.modules.set('simdKernels', { module, exports: HELPER_EXPORTS });
  const register = (kernelName: string, kernelFunc: (exports: Exports) => tf.KernelFunc): void =>
    void tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc(exports) });
  register(KERNELS.attention, cachedAttentionKernel);
  register(KERNELS.layerNorm, layerNormKernel);
  register(KERNELS.layerNormGrad, layerNormGradKernel);
  register(KERNELS.columnSum, columnSumKernel);
  register(KERNELS.adamw, adamwKernel);
  register(KERNELS.gelu, geluKernel);
  register(KERNELS.geluGrad, geluGradKernel);
  register(KERNELS.causalAttention, causalAttentionKernel);
  register(KERNELS.causalAttentionGrad, causalAttentionGradKernel);
  tf.registerKernel({ kernelName: KERNELS.decodeLayer, backendName: 'wasm', kernelFunc: decodeLayerKernel });
  installed = true;
  return true;
}

/** Removes the kernels (for tests and benches that compare with and without them). */
export function uninstallSimdKernels(): void {
  if (!installed) return;
  for (const name of Object.values(KERNELS)) tf.unregisterKernel(name, 'wasm');
  helperPool.modules.delete('simdKernels');
  installed = false;
}

/** Whether the kernels can take rows of `width` floats (head size, model width) on the current backend. */
export function simdKernelsAvailable(width: number): boolean {
  return installed && tf.getBackend() === 'wasm' && width % 4 === 0;
}

/**
 * softmax(scale * q K^T + bias) V for one query per head [B, H, 1, hd] over a cache
 * [B, H, capacity, hd] of keys and values that holds `length - 1` positions, after writing kNew and
 * vNew [B, H, 1, hd] at position `length - 1`: [B, H, 1, hd]. bias is [B, 1, 1, length]. Mutates
 * the cache.
 */
export function cachedAttention(
  q: tf.Tensor4D,
  kNew: tf.Tensor4D,
  vNew: tf.Tensor4D,
  cache: { k: tf.Tensor4D; v: tf.Tensor4D },
  bias: tf.Tensor4D,
  length: number,
  scale: number,
): tf.Tensor4D {
  const [B, H, capacity, hd] = cache.k.shape;
  if (!(Number.isInteger(length) && length >= 1 && length <= capacity))
    throw new Error(
      `cachedAttention: length must be an integer in [1, ${capacity}] (the cache's capacity), got ${length}`,
    );
  expectLanes('cachedAttention', 'the head size', hd);
  const expect = expectShape('cachedAttention');
  expect('the value cache', cache.v, [B, H, capacity, hd]);
  expect('q', q, [B, H, 1, hd]);
  expect('kNew', kNew, [B, H, 1, hd]);
  expect('vNew', vNew, [B, H, 1, hd]);
  expect('bias', bias, [B, 1, 1, length]);
  const inputs = { q, kNew, vNew, kCache: cache.k, vCache: cache.v, bias };
  return tf.engine().runKernel(KERNELS.attention, inputs, { length, scale }) as tf.Tensor4D;
}

/**
 * LayerNorm of each row of x [R, d] with gain and bias [d]: y = xhat * gain + bias, where
 * xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps). Returns y, xhat [R, d] and rstd [R, 1]
 * (what the gradient needs). Not differentiable itself: GPT wraps it with layerNormGrad.
 */
export function layerNormRows(
  x: tf.Tensor2D,
  gain: tf.Tensor,
  bias: tf.Tensor,
  eps: number,
): [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D] {
  const [R, d] = x.shape;
  expectLanes('layerNormRows', 'the row width', d);
  const expect = expectShape('layerNormRows');
  expect('x', x, [R, d]);
  expect('gain', gain, [d]);
  expect('bias', bias, [d]);
  return tf.engine().runKernel(KERNELS.layerNorm, { x, gain, bias }, { eps }) as unknown as [
    tf.Tensor2D,
    tf.Tensor2D,
    tf.Tensor2D,
  ];
}

/** The gradients [dx, dgain, dbias] of layerNormRows from dy [R, d] and what it returned. */
export function layerNormGrad(
  dy: tf.Tensor,
  xhat: tf.Tensor,
  rstd: tf.Tensor,
  gain: tf.Tensor,
): [tf.Tensor2D, tf.Tensor1D, tf.Tensor1D] {
  const [R, d] = xhat.shape as [number, number];
  expectLanes('layerNormGrad', 'the row width', d);
  const expect = expectShape('layerNormGrad');
  expect('dy', dy, [R, d]);
  expect('rstd', rstd, [R, 1]);
  expect('gain', gain, [d]);
  return tf.engine().runKernel(KERNELS.layerNormGrad, { dy, xhat, rstd, gain }) as unknown as [
    tf.Tensor2D,
    tf.Tensor1D,
    tf.Tensor1D,
  ];
}

/** One transformer block's weights, as GPT names them (h<l>.ln1.g and so on, without the prefix). */
export interface BlockWeights {
  'ln1.g': tf.Tensor;
  'ln1.b': tf.Tensor;
  'attn.wqkv': tf.Tensor;
  'attn.bqkv': tf.Tensor;
  'attn.wo': tf.Tensor;
  'attn.bo': tf.Tensor;
  'ln2.g': tf.Tensor;
  'ln2.b': tf.Tensor;
  'mlp.w1': tf.Tensor;
  'mlp.b1': tf.Tensor;
  'mlp.w2': tf.Tensor;
  'mlp.b2': tf.Tensor;
}

/**
 * One decoding step of a pre-norm block on x [B, d] (one new token per row) over its in-place KV
 * cache: x + attention(LN1(x)), then that + MLP(LN2(that)), with cachedAttention's cache and bias
 * arguments. The same kernels, in the same order, as GPT's layer op by op (so the same floats), in
 * one call of the tfjs engine instead of ~20 (ops, reshapes, customGrad scopes): its bookkeeping per
 * op was about a fifth of a ~1M model's sampling time. No gradient (decoding only).
 */
export function decodeLayer(
  x: tf.Tensor2D,
  weights: BlockWeights,
  cache: { k: tf.Tensor4D; v: tf.Tensor4D },
  bias: tf.Tensor4D,
  length: number,
  scale: number,
  eps: number,
): tf.Tensor2D {
  const [B, H, capacity, hd] = cache.k.shape;
  const d = H * hd;
  if (!(Number.isInteger(length) && length >= 1 && length <= capacity))
    throw new Error(
      `decodeLayer: length must be an integer in [1, ${capacity}] (the cache's capacity), got ${length}`,
    );
  expectLanes('decodeLayer', 'the head size', hd);
  const expect = expectShape('decodeLayer');
  expect('x', x, [B, d]);
  expect('the value cache', cache.v, [B, H, capacity, hd]);
  expect('bias', bias, [B, 1, 1, length]);
  const hidden = weights['mlp.w1'].shape[1]!;
  const shapes: Record<keyof BlockWeights, number[]> = {
    'ln1.g': [d],
    'ln1.b': [d],
    'attn.wqkv': [d, 3 * d],
    'attn.bqkv': [3 * d],
    'attn.wo': [d, d],
    'attn.bo': [d],
    'ln2.g': [d],
    'ln2.b': [d],
    'mlp.w1': [d, hidden],
    'mlp.b1': [hidden],
    'mlp.w2': [hidden, d],
    'mlp.b2': [d],
  };
  for (const [name, shape] of Object.entries(shapes))
    expect(name, weights[name as keyof BlockWeights], shape);
  const inputs = { x, kCache: cache.k, vCache: cache.v, bias, ...weights };
  return tf.engine().runKernel(KERNELS.decodeLayer, inputs as unknown as tf.NamedTensorMap, {
    length,
    scale,
    eps,
  }) as tf.Tensor2D;
}

/**
 * RxrlDecodeLayer: calls the kernels registered for each op of the block (rxrl's, or tfjs's where
 * rxrl's matmul is not installed) directly, with what each op gets from its tfjs op (the matmul's
 * operands as tf.fused.matMul passes them: 3-D, a batch of one). Every intermediate it makes is freed,
 * also when a kernel throws: the engine does not know them.
 */
function decodeLayerKernel(args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const { inputs, attrs } = args as KernelArgs;
  const backend = args.backend as unknown as WasmBackend;
  const { length, scale, eps } = attrs as Record<'length' | 'scale' | 'eps', number>;
  const w = (name: keyof BlockWeights): tf.TensorInfo => inputs[name]!;
  const x = inputs.x!;
  const [B, H, , hd] = inputs.kCache!.shape as [number, number, number, number];
  const d = H * hd;
  const made: tf.TensorInfo[] = [];
  const run = (name: string, ins: Record<string, tf.TensorInfo>, at: Record<string, unknown> = {}) => {
    const kernel = tf.getKernel(name, 'wasm');
    if (!kernel) throw new Error(`RxrlDecodeLayer: no ${name} kernel is registered on the wasm backend`);
    const out = kernel.kernelFunc({ inputs: ins, attrs: at as tf.NamedAttrMap, backend: args.backend });
    const outs = Array.isArray(out) ? out : [out];
    made.push(...outs);
    return outs;
  };
  const view = (t: tf.TensorInfo, shape: number[]): tf.TensorInfo => ({
    dataId: t.dataId,
    shape,
    dtype: t.dtype,
  });
  const norm = (at: tf.TensorInfo, prefix: 'ln1' | 'ln2'): tf.TensorInfo =>
    run(KERNELS.layerNorm, { x: at, gain: w(`${prefix}.g`), bias: w(`${prefix}.b`) }, { eps })[0]!;
  const linear = (a: tf.TensorInfo, weight: keyof BlockWeights, b: keyof BlockWeights): tf.TensorInfo => {
    const [rows, K] = a.shape as [number, number];
    const N = w(weight).shape[1]!;
    const [y] = run(
      '_FusedMatMul',
      { a: view(a, [1, rows, K]), b: view(w(weight), [1, K, N]), bias: w(b) },
      { transposeA: false, transposeB: false, activation: 'linear', leakyreluAlpha: 0.2 },
    );
    return view(y!, [rows, N]);
  };
  const add = (a: tf.TensorInfo, b: tf.TensorInfo): tf.TensorInfo => run('Add', { a, b })[0]!;
  let out: tf.TensorInfo | undefined;
  try {
    const qkv = linear(norm(x, 'ln1'), 'attn.wqkv', 'attn.bqkv');
    const [q, k, v] = run('SplitV', { x: qkv }, { numOrSizeSplits: [d, d, d], axis: 1 });
    const heads = [B, H, 1, hd];
    const [y] = run(
      KERNELS.attention,
      {
        q: view(q!, heads),
        kNew: view(k!, heads),
        vNew: view(v!, heads),
        kCache: inputs.kCache!,
        vCache: inputs.vCache!,
        bias: inputs.bias!,
      },
      { length, scale },
    );
    const x1 = add(x, linear(view(y!, [B, d]), 'attn.wo', 'attn.bo'));
    const [g] = run(KERNELS.gelu, { x: linear(norm(x1, 'ln2'), 'mlp.w1', 'mlp.b1') });
    out = add(x1, linear(g!, 'mlp.w2', 'mlp.b2'));
    return out;
  } finally {
    for (const t of made) if (t !== out) backend.disposeData(t.dataId);
  }
}

/**
 * GELU in its sigmoid form, x * sigmoid(1.702 x), elementwise over x (float32, size a multiple of
 * 4): [y, s] with s = sigmoid(1.702 x), which geluGrad takes.
 */
export function gelu(x: tf.Tensor): [tf.Tensor, tf.Tensor] {
  expectLanes('gelu', 'the size', x.size);
  expectShape('gelu')('x', x, x.shape);
  return tf.engine().runKernel(KERNELS.gelu, { x }) as unknown as [tf.Tensor, tf.Tensor];
}

/** GELU's gradient dy * (s + 1.702 x s (1 - s)) from dy, x and gelu's s. */
export function geluGrad(dy: tf.Tensor, x: tf.Tensor, s: tf.Tensor): tf.Tensor {
  expectLanes('geluGrad', 'the size', x.size);
  const expect = expectShape('geluGrad');
  expect('dy', dy, x.shape);
  expect('s', s, x.shape);
  return tf.engine().runKernel(KERNELS.geluGrad, { dy, x, s }) as tf.Tensor;
}

export function columnSum(x: tf.Tensor2D): tf.Tensor1D {
  expectLanes('columnSum', 'the row width', x.shape[1]);
  expectShape('columnSum')('x', x, [x.shape[0], x.shape[1]]);
  return tf.engine().runKernel(KERNELS.columnSum, { x }) as tf.Tensor1D;
}

/**
 * One AdamW update of a parameter p with its gradient g and moments m, v (all float32, one shape):
 * [p', m', v'] (see ADAMW_WAT). weightDecay 0 leaves the decay term out.
 */
export function adamwStep(
  p: tf.Tensor,
  g: tf.Tensor,
  m: tf.Tensor,
  v: tf.Tensor,
  scalars: AdamWScalars,
): [tf.Tensor, tf.Tensor, tf.Tensor] {
  const expect = expectShape('adamwStep');
  for (const [name, t] of Object.entries({ p, g, m, v })) expect(name, t, p.shape);
  return tf.engine().runKernel(
    KERNELS.adamw,
    { p, g, m, v },
    {
      ...scalars,
      oneMinusBeta1: 1 - scalars.beta1,
      oneMinusBeta2: 1 - scalars.beta2,
    },
  ) as unknown as [tf.Tensor, tf.Tensor, tf.Tensor];
}

/**
 * Causal self-attention over each row's T tokens: q, k, v [B*T, H*hd] (heads side by side, as the
 * projections give them) -> y [B*T, H*hd], with y_i = softmax_{j<=i}(scale q_i . k_j) v_j per head,
 * and the probabilities P [B, H, T, T] (set for j <= i), which causalAttentionGrad takes.
 */
export function causalAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  heads: { B: number; T: number; H: number },
  scale: number,
): [tf.Tensor2D, tf.Tensor4D] {
  const attrs = attentionShape('causalAttention', q, heads, { k, v });
  return tf.engine().runKernel(KERNELS.causalAttention, { q, k, v }, { ...attrs, scale }) as unknown as [
    tf.Tensor2D,
    tf.Tensor4D,
  ];
}

/** The gradients [dq, dk, dv] of causalAttention from dy [B*T, H*hd], its inputs and its P. */
export function causalAttentionGrad(
  dy: tf.Tensor,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  p: tf.Tensor,
  heads: { B: number; T: number; H: number },
  scale: number,
): [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D] {
  const attrs = attentionShape('causalAttentionGrad', q, heads, { k, v, dy });
  expectShape('causalAttentionGrad')('p', p, [heads.B, heads.H, heads.T, heads.T]);
  return tf
    .engine()
    .runKernel(KERNELS.causalAttentionGrad, { dy, q, k, v, p }, { ...attrs, scale }) as unknown as [
    tf.Tensor2D,
    tf.Tensor2D,
    tf.Tensor2D,
  ];
}

function attentionShape(
  op: string,
  q: tf.Tensor,
  { B, T, H }: { B: number; T: number; H: number },
  others: Record<string, tf.Tensor>,
): { B: number; T: number; H: number; hd: number } {
  const width = q.shape[1] ?? 0;
  if (!(H > 0 && width % H === 0)) throw new Error(`${op}: width ${width} does not split into ${H} heads`);
  const hd = width / H;
  expectLanes(op, 'the head size', hd);
  const expect = expectShape(op);
  expect('q', q, [B * T, width]);
  for (const [name, t] of Object.entries(others)) expect(name, t, [B * T, width]);
  return { B, T, H, hd };
}

/** The kernels step through rows 4 floats at a time: a row of another width would run past its end. */
function expectLanes(op: string, what: string, width: number): void {
  if (width % 4 !== 0) throw new Error(`${op}: ${what} must be a multiple of 4, got ${width}`);
}

export function expectShape(op: string) {
  return (name: string, t: tf.Tensor, shape: number[]): void => {
    if (t.dtype !== 'float32' || !tf.util.arraysEqual(t.shape, shape))
      throw new Error(
        `${op}: ${name} must be float32 [${shape.join(', ')}], got ${t.dtype} [${t.shape.join(', ')}]`,
      );
  };
}

/**
 * What a kernel body gets: its inputs and attributes, a way to allocate outputs, memory offsets, and
 * the kernel it replaced (for what it does not take).
 */
export interface KernelIO {
  inputs: Record<string, tf.TensorInfo>;
  attrs: Record<string, number>;
  /** A new float32 tensor on the wasm heap. */
  output(shape: number[]): tf.TensorInfo;
  /** Frees a tensor made with `output` that the kernel does not return. */
  free(t: tf.TensorInfo): void;
  /** The memory offset of a tensor's data on the wasm heap. */
  at(t: tf.TensorInfo): number;
  /** Runs the kernel this one replaced on the same call (only for kernels made with `previous`). */
  fallBack(): tf.TensorInfo | tf.TensorInfo[];
}

/** KernelIO's functions that depend only on the backend, made once per backend. */
const backendIO = new WeakMap<WasmBackend, Pick<KernelIO, 'output' | 'free' | 'at'>>();

function ioOf(backend: WasmBackend): Pick<KernelIO, 'output' | 'free' | 'at'> {
  let io = backendIO.get(backend);
  if (!io) {
    io = {
      output: (shape) => {
        const t = backend.makeOutput(shape, 'float32');
        made.push(t);
        return t;
      },
      free: (t) => void backend.disposeData(t.dataId),
      at: (t) => backend.dataIdMap.get(t.dataId).memoryOffset,
    };
    backendIO.set(backend, io);
  }
  return io;
}

function fallBackTo(
  previous: tf.KernelConfig | undefined,
  args: Parameters<tf.KernelFunc>[0],
): tf.TensorInfo | tf.TensorInfo[] {
  if (!previous) throw new Error('wasmKernel: no kernel to fall back to');
  return previous.kernelFunc(args) as tf.TensorInfo | tf.TensorInfo[];
}

/**
 * A tfjs kernel function on the wasm backend around `body`, in place of `previous` if given. A call
 * makes no new arrow functions (only a bound fallBack): decoding runs ~130 kernels a step, and five
 * closures made per call cost ~2% of a ~1M model's sampling call, mostly in naming them (the
 * TypeScript loader keeps function names).
 *
 * Should `body` throw, what it made with `output` is freed (its outputs and its scratch), unless a
 * helper thread is stuck and may still write there (kernelThreads.ts's HelperStuckError): so the
 * kernels free only what they are done with, and only on success.
 */
export function wasmKernel(
  body: (io: KernelIO) => tf.TensorInfo | tf.TensorInfo[],
  previous?: tf.KernelConfig,
): tf.KernelFunc {
  return (args) => {
    const { inputs, attrs = {} } = args as KernelArgs;
    const io = ioOf(args.backend as unknown as WasmBackend);
    const start = made.length;
    try {
      const out = body({
        inputs,
        attrs: attrs as KernelIO['attrs'],
        ...io,
        fallBack: fallBackTo.bind(undefined, previous, args),
      });
      made.length = start;
      return out;
    } catch (error) {
      freeUnlessStuck(error, made.splice(start), io.free);
      throw error;
    }
  };
}

/** The tensors made with KernelIO's `output` by the kernel calls under way (wasmKernel frees a failed call's). */
const made: tf.TensorInfo[] = [];

/** RxrlCachedAttention around an `attend` export (this module's, or gemmKernel.ts's with FMAs). */
export function cachedAttentionKernel({ attend }: { attend: Attend }): tf.KernelFunc {
  return wasmKernel(({ inputs: { q, kNew, vNew, kCache, vCache, bias }, attrs, output, free, at }) => {
    const [B, H, capacity, hd] = kCache!.shape as [number, number, number, number];
    const out = output([B, H, 1, hd]);
    // One head's scores at a time, padded to whole SIMD vectors.
    const scratch = output([Math.ceil(attrs.length! / 4) * 4]);
    const [qAt, kNewAt, vNewAt, kAt, vAt, biasAt] = [q, kNew, vNew, kCache, vCache, bias].map((t) => at(t!));
    attend(
      qAt!,
      kNewAt!,
      vNewAt!,
      kAt!,
      vAt!,
      biasAt!,
      at(scratch),
      at(out),
      B,
      H,
      capacity,
      attrs.length!,
      hd,
      attrs.scale!,
    );
    free(scratch);
    return out;
  });
}

function layerNormKernel(exports: Exports): tf.KernelFunc {
  return wasmKernel(({ inputs: { x, gain, bias }, attrs, output, at }) => {
    const [R, d] = x!.shape as [number, number];
    const outs = [output([R, d]), output([R, d]), output([R, 1])];
    const [y, xhat, rstd] = outs.map(at) as [number, number, number];
    // Large ones cut in rows, one run per thread.
    runCut(helpersFor(R * d), exports, 'layerNorm', R, 1, (r0, r1) => {
      const row = r0 * d * 4;
      return [at(x!) + row, at(gain!), at(bias!), y + row, xhat + row, rstd + r0 * 4, r1 - r0, d, attrs.eps!];
    });
    return outs;
  });
}

function layerNormGradKernel(exports: Exports): tf.KernelFunc {
  return wasmKernel(({ inputs: { dy, xhat, rstd, gain }, output, at }) => {
    const [R, d] = xhat!.shape as [number, number];
    const outs = [output([R, d]), output([d]), output([d])];
    const [dx, dGain, dBias] = outs.map(at) as [number, number, number];
    // Large ones cut in rows for dx (a call for all rows sums the gain and bias gradients on the
    // way); where they were cut, those sums (over all rows, in row order) are cut in columns after.
    const helpers = helpersFor(R * d);
    const cut = runCut(helpers, exports, 'layerNormGrad', R, 1, (r0, r1) => {
      const row = r0 * d * 4;
      const whole = r0 === 0 && r1 === R ? 1 : 0;
      return [
        at(dy!) + row,
        at(xhat!) + row,
        at(rstd!) + r0 * 4,
        at(gain!),
        dx + row,
        dGain,
        dBias,
        r1 - r0,
        d,
        whole,
      ];
    });
    if (cut)
      runCut(helpers, exports, 'layerNormGradSums', d, 4, (c0, c1) => [
        at(dy!) + c0 * 4,
        at(xhat!) + c0 * 4,
        dGain + c0 * 4,
        dBias + c0 * 4,
        R,
        c1 - c0,
        d * 4,
      ]);
    return outs;
  });
}

function columnSumKernel(exports: Exports): tf.KernelFunc {
  return wasmKernel(({ inputs: { x }, output, at }) => {
    const [R, C] = x!.shape as [number, number];
    const out = output([C]);
    // Large ones cut in columns (whole vectors of 4): each column still sums its rows in order.
    runCut(helpersFor(R * C), exports, 'columnSum', C, 4, (c0, c1) => [
      at(x!) + c0 * 4,
      at(out) + c0 * 4,
      R,
      c1 - c0,
      C * 4,
    ]);
    return out;
  });
}

function adamwKernel(exports: Exports): tf.KernelFunc {
  return wasmKernel(({ inputs: { p, g, m, v }, attrs, output, at }) => {
    const outs = [output(p!.shape), output(p!.shape), output(p!.shape)];
    const n = tf.util.sizeFromShape(p!.shape);
    const scalars = ADAMW_SCALARS.map((name) => attrs[name]!);
    // Large ones cut in runs of elements (whole vectors of 4, so each element takes the same path).
    runCut(helpersFor(n), exports, 'adamw', n, 4, (start, end) => [
      ...[p!, g!, m!, v!, ...outs].map((t) => at(t) + start * 4),
      end - start,
      attrs.weightDecay === 0 ? 0 : 1,
      ...scalars,
    ]);
    return outs;
  });
}

/** This module's exports that its kernels hand to helper threads. */
const HELPER_EXPORTS = [
  'layerNorm',
  'layerNormGrad',
  'layerNormGradSums',
  'columnSum',
  'adamw',
  'geluGrad',
] as const;

function causalAttentionKernel(exports: Exports): tf.KernelFunc {
  return wasmKernel(({ inputs: { q, k, v }, attrs, output, at }) => {
    const { B, T, H, hd, scale } = attrs as Record<'B' | 'T' | 'H' | 'hd' | 'scale', number>;
    const [y, p] = [output([B * T, H * hd]), output([B, H, T, T])];
    exports.causalAttention(at(q!), at(k!), at(v!), at(y), at(p), B, T, H, hd, scale);
    return [y, p];
  });
}

function causalAttentionGradKernel(exports: Exports): tf.KernelFunc {
  return wasmKernel(({ inputs: { dy, q, k, v, p }, attrs, output, free, at }) => {
    const { B, T, H, hd, scale } = attrs as Record<'B' | 'T' | 'H' | 'hd' | 'scale', number>;
    const [dq, dk, dv] = [output([B * T, H * hd]), output([B * T, H * hd]), output([B * T, H * hd])];
    const scratch = output([T]);
    const [dyAt, qAt, kAt, vAt, pAt] = [dy, q, k, v, p].map((t) => at(t!));
    exports.causalAttentionGrad(
      dyAt!,
      qAt!,
      kAt!,
      vAt!,
      pAt!,
      at(scratch),
      at(dq),
      at(dk),
      at(dv),
      B,
      T,
      H,
      hd,
      scale,
    );
    free(scratch);
    return [dq, dk, dv];
  });
}

function geluKernel(exports: Exports): tf.KernelFunc {
  return wasmKernel(({ inputs: { x }, output, at }) => {
    const [y, s] = [output(x!.shape), output(x!.shape)];
    exports.gelu(
      at(x!),
      at(y),
      at(s),
      x!.shape.reduce((n, d) => n * d, 1),
    );
    return [y, s];
  });
}

function geluGradKernel(exports: Exports): tf.KernelFunc {
  return wasmKernel(({ inputs: { dy, x, s }, output, at }) => {
    const dx = output(x!.shape);
    const n = tf.util.sizeFromShape(x!.shape);
    runCut(helpersFor(n), exports, 'geluGrad', n, 4, (start, end) => [
      ...[dy!, x!, s!, dx].map((t) => at(t) + start * 4),
      end - start,
    ]);
    return dx;
  });
}
