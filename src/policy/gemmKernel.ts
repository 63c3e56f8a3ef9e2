/**
 * rxrl's relaxed-SIMD kernels for tfjs's wasm backend, built on fused multiply-adds (WebAssembly's
 * relaxed SIMD `f32x4.relaxed_madd`, which V8 compiles to `vfmadd231ps` where the CPU has FMA):
 *
 * - the matmul, BatchMatMul and _FusedMatMul (tf.matMul and tf.fused.matMul), in place of XNNPACK's;
 * - simdKernels.ts's causal attention for training (RxrlCausalAttention and its gradient): its six
 *   per-head products (two forward, four back) on the matmul's micro-kernels, skipping the blocks and
 *   the stretches of K that causality makes zero (those kernels' own loops, a dot product per score
 *   and a read-modify-write of dK and dV per key, took about 2.5x as long);
 * - simdKernels.ts's GELU and decoding attention over the KV cache (RxrlGelu, RxrlCachedAttention),
 *   with an FMA exponential whose constants live in locals (half and two thirds of the time);
 * - tf.exp where every input lies in [-87, 88] (the log-softmax's and the entropy's: 8x
 *   tfjs-backend-wasm's scalar loop).
 *
 * Why: dense matmuls are most of a learner step on the wasm backend (90% of the ~10M model's step
 * with this kernel; 600 of 860 ms of kernel time for the ~1M model's under XNNPACK). tfjs-backend-wasm
 * hands them to XNNPACK, whose wasm build has only SIMD128's separate multiply and add. Measured here
 * in one process: XNNPACK 20-33 GFLOP/s on the learner's shapes; this kernel's 6 x 8 micro-kernel
 * 39-40 in a fast stretch, the whole matmul 85-90% of that, against 37-45 for a loop of FMAs alone
 * (bench/kernels.ts measures the learner step and sampling with and without it).
 *
 * How (the matmul): C = A B for each batch entry, in blocks of rows and of K (KC, MC). A is packed into
 * panels of 6 rows ([K][6] floats; then 4, and rows past those one at a time); B into panels of 8
 * columns ([K][8], then 4, the last one padded with zeros), except for few rows (GEMM_MIN_ROWS), where
 * it is read where it lies the first time and packed once from the second (decoding's weights:
 * PackedWeights). A micro-kernel keeps a 6 x 8 block of C in 12 registers while it runs down K: per
 * k, two loads of B, six broadcast loads of A and twelve FMAs (attention's causal products use blocks
 * of 4 x 8). Packing reads A and B through strides, so the transposed
 * cases (A^T B and A B^T, the gradients) cost no transpose. A bias (tf.fused.matMul's) is where the
 * sums start. Between blocks of K the sums wait in a scratch copy of C laid out panel by panel, which
 * the next block reads in order (`cp`). The loop over K is deliberately not unrolled: V8's optimising compiler hoists an
 * unrolled body's loads above its FMAs and spills registers (seen in its disassembly), which made it
 * slower.
 *
 * Each element of C sums its K products in order, whatever row or column it is, so a row's result
 * does not depend on the other rows of the batch (the sampler's padding invariance relies on that),
 * nor on the threads: with setMatmulThreads(n), products of THREADED_WORK multiply-adds and more
 * are cut into n parts of rows or of columns, n - 1 of them computed on helper threads by the same
 * kernels, in place in the backend's heap, which rxrl makes shared (sharedHeap.ts, kernelThreads.ts).
 * Causal attention and GELU are cut likewise, along sequences and elements.
 *
 * V8 ships relaxed SIMD enabled from 11.4 (Node 21 on); Node 20's V8 11.3 has it behind
 * `--experimental-wasm-relaxed-simd`, which installGemmKernel sets (V8 reads wasm feature flags
 * when it compiles a module). Where the module still does not compile, the kernel is not installed
 * and matmuls stay on XNNPACK. (On an x86 CPU without FMA, before 2013's, V8 would compile
 * relaxed_madd to a multiply and an add, and this kernel would be slower than XNNPACK.) Like
 * simdKernels.ts it runs on the wasm backend's own memory, so it is installed only on
 * tfjs-backend-wasm 4.x's single-threaded build.
 */
import v8 from 'node:v8';
import * as tf from '@tensorflow/tfjs';
import wabtInit from 'wabt';
import { helperPool, helpersFor, KernelHelpers, runCut } from './kernelThreads.ts';
import { memoryImport, type SharedMemory } from './sharedHeap.ts';
import {
  cachedAttentionKernel,
  expectShape,
  forEachCachedHead,
  keysUpToQuery,
  KERNELS as SIMD_KERNELS,
  scratchSoftmax,
  wasmKernel,
  type Attend,
  type KernelIO,
  type WasmBackend,
} from './simdKernels.ts';

/** The WebAssembly JS API, a Node global that the ES library this project compiles against does not type. */
declare const WebAssembly: {
  Memory: abstract new (...args: never[]) => { buffer: ArrayBuffer | SharedArrayBuffer };
  validate(bytes: Uint8Array): boolean;
  compile(bytes: Uint8Array): Promise<object>;
  instantiate(module: object, imports: object): Promise<{ exports: object }>;
};

/**
 * Rows of A per micro-kernel block: 6 for the matmul (a 6 x 8 block of C in 12 registers, against 8
 * for 4 x 8: per FMA fewer loads and less loop, and enough sums in flight to cover the FMA's latency;
 * 1.08-1.18x on the learner's shapes, measured side by side), and 4 for attention's causal products,
 * whose masks and zero padding work in blocks of 4 rows. V8 gives wasm 15 vector registers: 12 sums,
 * 2 vectors of B and one broadcast of A fill them.
 */
const MR = { matmul: 6, causal: 4 } as const;

/**
 * The blocks of K and of rows that $gemm packs and multiplies at a time (a multiple of its MR): a panel
 * of B (KC x 8 floats, 8 KiB) stays in the L1 cache while it meets each panel of the block of A
 * (MC x KC floats, up to 256 KiB), which stays in L2.
 */
const KC = 256;
const mcOf = (mr: number): number => Math.floor(256 / mr) * mr;

/** The matmul's blocks of rows and of K (for tests that cross them). */
export const GEMM_BLOCKS = { rows: mcOf(MR.matmul), k: KC } as const;

/** WAT: $w and $valid, the width of the panel of B from column $j (8, or 4 at the end) and its columns in B. */
const PANEL_WIDTH = `
            (local.set $w (select (i32.const 8) (i32.const 4) (i32.le_u (i32.add (local.get $j) (i32.const 8)) (local.get $N))))
            (local.set $valid (select (local.get $w) (i32.sub (local.get $N) (local.get $j))
              (i32.le_u (i32.add (local.get $j) (local.get $w)) (local.get $N))))`;

/**
 * From this many rows on, B is packed on every call. Below it, B is read from a copy packed once from
 * its second use on (PackedWeights: decoding's weights); its first time, where it lies if its rows are
 * whole vectors of 4 floats and it is not transposed, otherwise on the kernel this one replaced, as
 * packing B for one product of few rows costs about as much as the product (XNNPACK keeps a weight
 * matrix packed between calls).
 */
export const GEMM_MIN_ROWS = 64;

/**
 * WAT: the micro-kernel `name` for a block of `mr` rows of A (a panel at $p, [K][mr]) and `nv`
 * vectors of 4 columns of B (a panel at $q, [K][4 nv]), storing into C at $c (rows $cRow bytes
 * apart). The sums start from the rows at $start, $startRow bytes apart (0: one bias row for all;
 * else where the previous block of K stored them: C, or $gemm's packed sums). With `partial`, only the first $valid (1-3)
 * columns of its single vector are read and stored.
 */
function microKernel(name: string, mr: number, nv: number, partial = false): string {
  const acc = (r: number, n: number): string => `$c${r}_${n}`;
  const each = (f: (r: number, n: number) => string): string =>
    Array.from({ length: mr }, (_, r) => Array.from({ length: nv }, (_, n) => f(r, n)).join('\n')).join('\n');
  const rowAt = (r: number): string =>
    `(i32.add (local.get $c) (i32.mul (i32.const ${r}) (local.get $cRow)))`;
  const startAt = (r: number): string =>
    `(i32.add (local.get $start) (i32.mul (i32.const ${r}) (local.get $startRow)))`;
  const start = partial
    ? each(
        (r) => `
    (local.set ${acc(r, 0)} (f32x4.splat (f32.load ${startAt(r)})))
    (if (i32.gt_u (local.get $valid) (i32.const 1)) (then
      (local.set ${acc(r, 0)} (f32x4.replace_lane 1 (local.get ${acc(r, 0)}) (f32.load offset=4 ${startAt(r)})))))
    (if (i32.gt_u (local.get $valid) (i32.const 2)) (then
      (local.set ${acc(r, 0)} (f32x4.replace_lane 2 (local.get ${acc(r, 0)}) (f32.load offset=8 ${startAt(r)})))))`,
      )
    : each((r, n) => `(local.set ${acc(r, n)} (v128.load offset=${n * 16} ${startAt(r)}))`);
  const store = partial
    ? each(
        (r) => `
    (f32.store ${rowAt(r)} (f32x4.extract_lane 0 (local.get ${acc(r, 0)})))
    (if (i32.gt_u (local.get $valid) (i32.const 1)) (then
      (f32.store offset=4 ${rowAt(r)} (f32x4.extract_lane 1 (local.get ${acc(r, 0)})))))
    (if (i32.gt_u (local.get $valid) (i32.const 2)) (then
      (f32.store offset=8 ${rowAt(r)} (f32x4.extract_lane 2 (local.get ${acc(r, 0)})))))`,
      )
    : each((r, n) => `(v128.store offset=${n * 16} ${rowAt(r)} (local.get ${acc(r, n)}))`);
  return `
  (func ${name} (param $p i32) (param $q i32) (param $c i32) (param $K i32) (param $cRow i32) (param $valid i32)
    (param $start i32) (param $startRow i32) (param $qStep i32) (param $pStep i32)
    ${each((r, n) => `(local ${acc(r, n)} v128)`)}
    ${Array.from({ length: nv }, (_, n) => `(local $b${n} v128)`).join(' ')}
    (local $a v128) (local $k i32)
    ${start}
    (local.set $k (local.get $K))
    ;; A loop that tests at its end: V8 then computes the broadcasts' addresses (memory start + offset)
    ;; once, before it, instead of on every k.
    (if (local.get $k) (then (loop $next
      ${Array.from({ length: nv }, (_, n) => `(local.set $b${n} (v128.load offset=${n * 16} (local.get $q)))`).join('\n')}
      ${Array.from(
        { length: mr },
        (_, r) => `
      (local.set $a (v128.load32_splat offset=${r * 4} (local.get $p)))
      ${Array.from(
        { length: nv },
        (_, n) =>
          `(local.set ${acc(r, n)} (f32x4.relaxed_madd (local.get $a) (local.get $b${n}) (local.get ${acc(r, n)})))`,
      ).join('\n')}`,
      ).join('')}
      (local.set $p (i32.add (local.get $p) (local.get $pStep)))
      (local.set $q (i32.add (local.get $q) (local.get $qStep)))
      (local.set $k (i32.sub (local.get $k) (i32.const 1)))
      (br_if $next (local.get $k)))))
    ${store})`;
}

/**
 * WAT: a call of the micro-kernel for a block of `rows` rows (6, 4 or 1) of A from row $i against the
 * current panel of B (8 columns, 4, or 1-3 of a padded panel), over the part of the current block of K
 * ($k0 to $k0 + $kLen) that $causal leaves (see $gemm): rows whose A is zero past its diagonal stop at
 * k = i + rows, rows whose A is zero before it start at k = i. The first block of K starts from the
 * bias, the others from the sums the previous block stored ($sc, $scRow; it stores at $cc, $ccRow).
 */
function blockCall(rows: number): string {
  const args = `(local.get $pk) (local.get $qk) (local.get $cc) (i32.sub (local.get $kEnd) (local.get $kStart)) (local.get $ccRow)
          (local.get $valid) (local.get $sc) (local.get $scRow) (local.get $qStep) (local.get $pStep${rows})`;
  const clamp = (x: string): string =>
    `(select (i32.const 0) (select ${x} (local.get $kLen) (i32.lt_s ${x} (local.get $kLen))) (i32.lt_s ${x} (i32.const 0)))`;
  return `
      (local.set $kStart (i32.const 0))
      (local.set $kEnd (local.get $kLen))
      (if (i32.eq (local.get $causal) (i32.const ${CAUSAL.upper}))
        (then (local.set $kStart ${clamp('(i32.sub (local.get $i) (local.get $k0))')})))
      (if (i32.eq (local.get $causal) (i32.const ${CAUSAL.lower}))
        (then (local.set $kEnd ${clamp(`(i32.sub (i32.add (local.get $i) (i32.const ${rows})) (local.get $k0))`)})))
      (if (i32.lt_s (local.get $kEnd) (local.get $kStart)) (then (local.set $kEnd (local.get $kStart))))
      (local.set $pk (i32.add (local.get $p) (i32.mul (local.get $kStart) (local.get $pStep${rows}))))
      (local.set $qk (i32.add (local.get $panel) (i32.mul (local.get $kStart) (local.get $qStep))))
      (if (i32.eq (local.get $valid) (i32.const 8))
        (then (call $block${rows}x8 ${args}))
        (else (if (i32.eq (local.get $valid) (i32.const 4))
          (then (call $block${rows}x4 ${args}))
          (else (call $block${rows}xPart ${args})))))`;
}

/**
 * How $gemm reads B: `inPlace` (few rows; its rows must be whole vectors of 4 columns); `whole`: the
 * panels of each block of K packed into bp before the rows of A meet them; `prepacked`: packed once by
 * the packB export, at bp (a weight matrix that decoding multiplies at every step: PackedWeights).
 */
const PACK_B = { inPlace: 0, whole: 1, prepacked: 2 } as const;

/**
 * What $gemm's $causal says about A and C: `none`; `scores`: C is a causal score matrix, of which only
 * the blocks with a row at or past their first column are computed (the others are not written);
 * `lower`: A's row i is zero past column i (causal probabilities: A B sums k <= i only); `upper`:
 * A's row i is zero before column i (their transpose).
 */
const CAUSAL = { none: 0, scores: 1, lower: 2, upper: 3 } as const;

/**
 * WAT: the micro-kernels' calls for one panel of B (its first column $j, $valid columns) over A's
 * panels of the current block of rows ($i0 to $iEnd; for causal scores from the panel of row $j on:
 * the panels before it lie above the diagonal).
 */
function overAPanels(mr: number): string {
  return `
    (local.set $i (local.get $i0))
    (if (i32.and (i32.eq (local.get $causal) (i32.const ${CAUSAL.scores})) (i32.gt_u (local.get $j) (local.get $i)))
      (then (local.set $i (select (local.get $j) (local.get $iEnd) (i32.lt_u (local.get $j) (local.get $iEnd))))))
    (local.set $p (select
      (i32.add (i32.add (local.get $a) (i32.shl (local.get $i) (i32.const 2))) (i32.mul (local.get $k0) (local.get $aCol)))
      (i32.add (local.get $ap) (i32.mul (i32.sub (local.get $i) (local.get $i0)) (i32.shl (local.get $kLen) (i32.const 2))))
      (local.get $aInPlace)))
    ;; Where the sums are stored: C, at the last block of K (or without cp); else the panel's packed
    ;; rows at cp (w floats a row: read back in order by the next block). Where they start: the bias
    ;; at the first block; else where the previous block stored them.
    (local.set $pc (i32.add (i32.add (local.get $cp) (i32.mul (i32.shl (local.get $j) (i32.const 2)) (local.get $M)))
      (i32.mul (local.get $i) (i32.shl (local.get $w) (i32.const 2)))))
    (local.set $cc (i32.add (i32.add (local.get $c) (i32.shl (local.get $j) (i32.const 2)))
      (i32.mul (local.get $i) (local.get $cRow))))
    (local.set $ccRow (local.get $cRow))
    (if (i32.eqz (local.get $k0))
      (then
        (local.set $sc (local.get $biasPanel))
        (local.set $scRow (i32.const 0)))
      (else
        (local.set $sc (select (local.get $pc) (local.get $cc) (local.get $cp)))
        (local.set $scRow (select (i32.shl (local.get $w) (i32.const 2)) (local.get $cRow) (local.get $cp)))))
    (if (i32.and (i32.ne (local.get $cp) (i32.const 0)) (i32.lt_u (i32.add (local.get $k0) (local.get $kLen)) (local.get $K)))
      (then
        (local.set $cc (local.get $pc))
        (local.set $ccRow (i32.shl (local.get $w) (i32.const 2)))))
    ${rowBlocks(mr)
      .map(
        (h) => `
    (block $blocks${h}Done (loop $blocks${h}
      (br_if $blocks${h}Done (i32.gt_u (i32.add (local.get $i) (i32.const ${h})) (local.get $iEnd)))${blockCall(h)}
      (local.set $p (i32.add (local.get $p) (local.get $pBlock${h})))
      (local.set $cc (i32.add (local.get $cc) (i32.mul (local.get $ccRow) (i32.const ${h}))))
      (local.set $sc (i32.add (local.get $sc) (i32.mul (local.get $scRow) (i32.const ${h}))))
      (local.set $i (i32.add (local.get $i) (i32.const ${h})))
      (br $blocks${h})))`,
      )
      .join('')}`;
}

/**
 * The heights of the blocks of rows $gemm<mr> multiplies, in turn, while that many rows are left: `mr`,
 * then 4 (a matmul of 16 rows, decoding's, is 6 + 6 + 4), then one at a time.
 */
function rowBlocks(mr: number): number[] {
  return [...new Set([mr, 4, 1])];
}

/** WAT: a vector of 4 copies of x. */
const splat = (x: number): string => `(v128.const f32x4 ${x} ${x} ${x} ${x})`;

/**
 * The constants of expFma, each held in a local (`$k_<name>`) that a function sets once: V8 builds a
 * v128.const in three instructions wherever it is used, inside loops too, which made the exponential
 * twice as long.
 */
const EXP_CONSTANTS = {
  log2e: Math.LOG2E,
  magic: 12582912,
  ln2hi: 0.693359375,
  ln2lo: -2.1219444e-4,
  c7: 1 / 5040,
  c6: 1 / 720,
  c5: 1 / 120,
  c4: 1 / 24,
  c3: 1 / 6,
  c2: 1 / 2,
  one: 1,
  low: -87,
} as const;

/** WAT: the locals expFma uses (`lanes` sets of temporaries), and the statements that set its constants. */
function expLocals(lanes = 1): string {
  return [
    ...Object.keys(EXP_CONSTANTS).map((k) => `(local $k_${k} v128)`),
    ...Array.from(
      { length: lanes },
      (_, u) => `(local $et${u} v128) (local $en${u} v128) (local $er${u} v128) (local $ep${u} v128)`,
    ),
  ].join(' ');
}
const EXP_SETUP = Object.entries(EXP_CONSTANTS)
  .map(([k, v]) => `(local.set $k_${k} ${splat(v)})`)
  .join('\n    ');

/**
 * WAT: statements that set local `target` to e^x (x <= 0; `x` a local's name), 4 lanes at a time, with
 * fused multiply-adds (about half the operations of simdKernels.ts's $exp4, to the same error):
 * n = round(x log2 e), found by adding 1.5 * 2^23 (n lands in the low bits of the sum's mantissa);
 * r = x - n ln2 (ln2 in two parts); e^r by its Taylor series to r^7 (truncation error < 6e-9) in
 * Horner form; 2^n built from n's bits. Below -87, 0. `u` picks a set of temporaries.
 */
function expFma(x: string, target: string, u = 0): string {
  const k = (name: keyof typeof EXP_CONSTANTS): string => `(local.get $k_${name})`;
  const [t, n, r, p] = ['et', 'en', 'er', 'ep'].map((name) => `$${name}${u}`) as [
    string,
    string,
    string,
    string,
  ];
  return `(local.set ${t} (f32x4.relaxed_madd (local.get ${x}) ${k('log2e')} ${k('magic')}))
      (local.set ${n} (f32x4.sub (local.get ${t}) ${k('magic')}))
      (local.set ${r} (f32x4.relaxed_nmadd (local.get ${n}) ${k('ln2hi')} (local.get ${x})))
      (local.set ${r} (f32x4.relaxed_nmadd (local.get ${n}) ${k('ln2lo')} (local.get ${r})))
      (local.set ${p} ${k('c7')})
      ${(['c6', 'c5', 'c4', 'c3', 'c2', 'one', 'one'] as const)
        .map((c) => `(local.set ${p} (f32x4.relaxed_madd (local.get ${p}) (local.get ${r}) ${k(c)}))`)
        .join('\n      ')}
      (local.set ${target} (v128.andnot
        (f32x4.mul (local.get ${p}) (i32x4.add (i32x4.shl (local.get ${t}) (i32.const 23)) ${k('one')}))
        (f32x4.lt (local.get ${x}) ${k('low')})))`;
}

/**
 * WAT: out = sum_s p_s V[s] over $len rows of a head's cache ($vRow, rows $rowBytes apart, weights
 * at $scratch), for `nv` vectors of 4 lanes from byte $d of the row: one accumulator per vector, so
 * `nv` independent chains of FMAs. Each lane sums its products in order of s.
 */
function weightedSum(nv: number): string {
  return `
          ${Array.from({ length: nv }, (_, n) => `(local.set $w${n} (v128.const f32x4 0 0 0 0))`).join(' ')}
          (local.set $at (i32.add (local.get $vRow) (local.get $d)))
          (local.set $s (i32.const 0))
          (block $wDone${nv} (loop $w${nv}
            (br_if $wDone${nv} (i32.ge_u (local.get $s) (local.get $len)))
            (local.set $e (v128.load32_splat (i32.add (local.get $scratch) (i32.shl (local.get $s) (i32.const 2)))))
            ${Array.from(
              { length: nv },
              (_, n) =>
                `(local.set $w${n} (f32x4.relaxed_madd (local.get $e) (v128.load offset=${n * 16} (local.get $at)) (local.get $w${n})))`,
            ).join('\n            ')}
            (local.set $at (i32.add (local.get $at) (local.get $rowBytes)))
            (local.set $s (i32.add (local.get $s) (i32.const 1)))
            (br $w${nv})))
          ${Array.from(
            { length: nv },
            (_, n) =>
              `(v128.store offset=${n * 16} (i32.add (local.get $outRow) (local.get $d)) (local.get $w${n}))`,
          ).join('\n          ')}
          (local.set $d (i32.add (local.get $d) (i32.const ${nv * 16})))`;
}

/** WAT: the sum of a vector's lanes as (l0 + l2) + (l1 + l3), the order the 4-key path's transpose-add takes. */
const hsumLikeHsum4 = (v: string): string => `(f32.add
        (f32.add (f32x4.extract_lane 0 ${v}) (f32x4.extract_lane 2 ${v}))
        (f32.add (f32x4.extract_lane 1 ${v}) (f32x4.extract_lane 3 ${v})))`;

/** WAT: the address of float $j of the row at $row. */
const AT_J = '(i32.add (local.get $row) (i32.shl (local.get $j) (i32.const 2)))';

/**
 * WAT: `body` for each row $i of a [T, T] matrix at $m, at $row; then `after` for each column
 * past the diagonal to the end of its block of 4 ($j; the columns a 4-row block of $gemm's causal
 * modes reads past the diagonal, so they must hold zeros).
 */
function eachCausalRow(body: string, after: string): string {
  return `
    (local.set $row (local.get $m))
    (local.set $i (i32.const 0))
    (block $rowsDone (loop $rows
      (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $T)))
      ${body}
      (local.set $j (i32.add (local.get $i) (i32.const 1)))
      (block $zerosDone (loop $zeros
        (br_if $zerosDone (i32.or (i32.ge_u (local.get $j) (local.get $T)) (i32.eqz (i32.and (local.get $j) (i32.const 3)))))
        ${after}
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $zeros)))
      (local.set $row (i32.add (local.get $row) (i32.shl (local.get $T) (i32.const 2))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $rows)))`;
}

/** WAT: the sum of a vector's 4 lanes. */
const hsum = (v: string): string => `(f32.add
        (f32.add (f32x4.extract_lane 0 ${v}) (f32x4.extract_lane 1 ${v}))
        (f32.add (f32x4.extract_lane 2 ${v}) (f32x4.extract_lane 3 ${v})))`;

/**
 * WAT: `body` for each head (b, h) of [B*T, H*hd] q/k/v rows, with $base the byte offset of its
 * first row (row b*T, column h*hd), $pAt the address of its [T, T] probabilities in P [B, H, T, T],
 * $rowBytes the bytes between rows and $tRow those of a P row.
 */
function eachHead(body: string): string {
  return `
    (local.set $tRow (i32.shl (local.get $T) (i32.const 2)))
    (block $headsDone (loop $heads
      (br_if $headsDone (i32.ge_u (local.get $bh) (i32.mul (local.get $B) (local.get $H))))
      (local.set $base (i32.add
        (i32.mul (i32.mul (i32.div_u (local.get $bh) (local.get $H)) (local.get $T)) (local.get $inRow))
        (i32.shl (i32.mul (i32.rem_u (local.get $bh) (local.get $H)) (local.get $hd)) (i32.const 2))))
      (local.set $yBase (i32.add
        (i32.mul (i32.mul (i32.div_u (local.get $bh) (local.get $H)) (local.get $T)) (local.get $outRow))
        (i32.shl (i32.mul (i32.rem_u (local.get $bh) (local.get $H)) (local.get $hd)) (i32.const 2))))
      (local.set $pAt (i32.add (local.get $p) (i32.mul (i32.mul (local.get $bh) (local.get $T)) (local.get $tRow))))
      ${body}
      (local.set $bh (i32.add (local.get $bh) (i32.const 1)))
      (br $heads)))`;
}

/** WAT: a $gemm call for a [T, T] by [T, hd] or [T, hd] by [hd, T] product of one head (see eachHead). */
function headGemm(
  a: string,
  [aRow, aCol]: [string, string],
  b: string,
  [bRow, bCol]: [string, string],
  c: string,
  cRow: string,
  [M, N, K]: [string, string, string],
  causal: keyof typeof CAUSAL,
): string {
  return `(call $gemm${MR.causal} ${a} ${aRow} ${aCol} ${b} ${bRow} ${bCol} (i32.const 0) (i32.const 0) ${c} ${cRow}
        ${M} ${N} ${K} (local.get $ap) (local.get $bp) (i32.const ${PACK_B.whole}) (i32.const ${CAUSAL[causal]})
        (i32.const 0))`;
}

const get = (name: string): string => `(local.get $${name})`;
const plus = (name: string, offset = 'base'): string =>
  `(i32.add (local.get $${name}) (local.get $${offset}))`;
const [T, HD, ROWS, OUT_ROWS, T_ROW, FOUR] = [
  get('T'),
  get('hd'),
  get('inRow'),
  get('outRow'),
  get('tRow'),
  '(i32.const 4)',
];

/**
 * WAT: causal self-attention for training on $gemm (what simdKernels.ts's RxrlCausalAttention and
 * RxrlCausalAttentionGrad compute; see there), per head: S = Q K^T (the blocks on and below the
 * diagonal), P = softmax(scale S) row by row over j <= i (zeros past the diagonal), Y = P V; and
 * back: dP = dY V^T, dS = scale P (dP - sum_j P dP), dQ = dS K, dK = dS^T Q, dV = P^T dY. The
 * products skip what the causal mask makes zero (CAUSAL).
 */
const ATTENTION_WAT = `
  ;; Decoding's attention over an in-place KV cache (simdKernels.ts's RxrlCachedAttention; see there
  ;; for the layout), with FMAs: scores 4 keys at a time (4 accumulators along the head, then a
  ;; transpose-add; a key alone sums its lanes in the same order, so a score does not depend on which
  ;; path computed it), expFma, and the weighted sum of V with one accumulator per vector of the head.
  ;; The softmax's sum runs one score at a time, in order, as simdKernels.ts's: a row's result does not
  ;; depend on its left padding.
  (func (export "attend")
    (param $q i32) (param $kNew i32) (param $vNew i32) (param $kc i32) (param $vc i32) (param $bias i32)
    (param $scratch i32) (param $out i32)
    (param $B i32) (param $H i32) (param $cap i32) (param $len i32) (param $hd i32) (param $scale f32)
    (local $b i32) (local $h i32) (local $bh i32) (local $rowBytes i32) (local $qRow i32) (local $kRow i32)
    (local $vRow i32) (local $biasRow i32) (local $outRow i32) (local $s i32) (local $d i32) (local $at i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $qv v128) (local $e v128)
    (local $maxv v128) (local $scaleV v128) (local $max f32) (local $sum f32) (local $x f32)
    ${Array.from({ length: 8 }, (_, n) => `(local $w${n} v128)`).join(' ')}
    ${expLocals()}
    ${EXP_SETUP}
    (local.set $rowBytes (i32.shl (local.get $hd) (i32.const 2)))
    (local.set $scaleV (f32x4.splat (local.get $scale)))
    ${forEachCachedHead(`        ;; scratch[s] = scale q.K[s] + bias[s], 4 keys at a time, then one at a time; and their max.
        (local.set $maxv (v128.const f32x4 -inf -inf -inf -inf))
        (local.set $max (f32.const -inf))
        (local.set $s (i32.const 0))
        (block $s4Done (loop $s4
          (br_if $s4Done (i32.gt_u (i32.add (local.get $s) (i32.const 4)) (local.get $len)))
          (local.set $at (i32.add (local.get $kRow) (i32.mul (local.get $s) (local.get $rowBytes))))
          (local.set $a0 (v128.const f32x4 0 0 0 0)) (local.set $a1 (v128.const f32x4 0 0 0 0))
          (local.set $a2 (v128.const f32x4 0 0 0 0)) (local.set $a3 (v128.const f32x4 0 0 0 0))
          (local.set $d (i32.const 0))
          (block $dDone (loop $dLoop
            (br_if $dDone (i32.ge_u (local.get $d) (local.get $rowBytes)))
            (local.set $qv (v128.load (i32.add (local.get $qRow) (local.get $d))))
            ${[0, 1, 2, 3]
              .map(
                (n) =>
                  `(local.set $a${n} (f32x4.relaxed_madd (local.get $qv) (v128.load (i32.add (i32.add (local.get $at) (local.get $d))${
                    n ? ` (i32.mul (local.get $rowBytes) (i32.const ${n}))` : ' (i32.const 0)'
                  })) (local.get $a${n})))`,
              )
              .join('\n            ')}
            (local.set $d (i32.add (local.get $d) (i32.const 16)))
            (br $dLoop)))
          ;; [sum a0, sum a1, sum a2, sum a3], each (l0 + l2) + (l1 + l3)
          (local.set $a0 (f32x4.add
            (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a0) (local.get $a1))
            (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a0) (local.get $a1))))
          (local.set $a2 (f32x4.add
            (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a2) (local.get $a3))
            (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a2) (local.get $a3))))
          (local.set $e (f32x4.add
            (f32x4.mul (f32x4.add
              (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a0) (local.get $a2))
              (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a0) (local.get $a2)))
              (local.get $scaleV))
            (v128.load (i32.add (local.get $biasRow) (i32.shl (local.get $s) (i32.const 2))))))
          (v128.store (i32.add (local.get $scratch) (i32.shl (local.get $s) (i32.const 2))) (local.get $e))
          (local.set $maxv (f32x4.max (local.get $maxv) (local.get $e)))
          (local.set $s (i32.add (local.get $s) (i32.const 4)))
          (br $s4)))
        (block $s1Done (loop $s1
          (br_if $s1Done (i32.ge_u (local.get $s) (local.get $len)))
          (local.set $at (i32.add (local.get $kRow) (i32.mul (local.get $s) (local.get $rowBytes))))
          (local.set $a0 (v128.const f32x4 0 0 0 0))
          (local.set $d (i32.const 0))
          (block $dDone (loop $dLoop
            (br_if $dDone (i32.ge_u (local.get $d) (local.get $rowBytes)))
            (local.set $a0 (f32x4.relaxed_madd (v128.load (i32.add (local.get $qRow) (local.get $d)))
              (v128.load (i32.add (local.get $at) (local.get $d))) (local.get $a0)))
            (local.set $d (i32.add (local.get $d) (i32.const 16)))
            (br $dLoop)))
          (local.set $x (f32.add (f32.mul ${hsumLikeHsum4('(local.get $a0)')} (local.get $scale))
            (f32.load (i32.add (local.get $biasRow) (i32.shl (local.get $s) (i32.const 2))))))
          (f32.store (i32.add (local.get $scratch) (i32.shl (local.get $s) (i32.const 2))) (local.get $x))
          (local.set $max (f32.max (local.get $max) (local.get $x)))
          (local.set $s (i32.add (local.get $s) (i32.const 1)))
          (br $s1)))
        (local.set $max (f32.max (local.get $max) (f32.max
          (f32.max (f32x4.extract_lane 0 (local.get $maxv)) (f32x4.extract_lane 1 (local.get $maxv)))
          (f32.max (f32x4.extract_lane 2 (local.get $maxv)) (f32x4.extract_lane 3 (local.get $maxv))))))
        ;; scratch[s] = e^(scratch[s] - max), 4 at a time over the scratch (padded to a multiple of 4);
        ;; summed one at a time, in order; then times 1/sum.
        (local.set $maxv (f32x4.splat (local.get $max)))
        (local.set $s (i32.const 0))
${scratchSoftmax(`(local.set $e (f32x4.sub (v128.load (local.get $at)) (local.get $maxv)))
          ${expFma('$e', '$e')}
          (v128.store (local.get $at) (local.get $e))`)}
        ;; out = sum_s scratch[s] V[s]: 8 vectors of the head at a time, then 4, then 1.
        (local.set $outRow (i32.add (local.get $out) (i32.mul (local.get $bh) (local.get $rowBytes))))
        (local.set $d (i32.const 0))
        (block $d8Done (loop $d8
          (br_if $d8Done (i32.gt_u (i32.add (local.get $d) (i32.const 128)) (local.get $rowBytes)))${weightedSum(8)}
          (br $d8)))
        (block $d4Done (loop $d4
          (br_if $d4Done (i32.gt_u (i32.add (local.get $d) (i32.const 64)) (local.get $rowBytes)))${weightedSum(4)}
          (br $d4)))
        (block $d1Done (loop $d1
          (br_if $d1Done (i32.ge_u (local.get $d) (local.get $rowBytes)))${weightedSum(1)}
          (br $d1)))`)})

  ;; tf.exp with expFma for x in [-87, 88] (n = round(x log2 e) in [-126, 127]: 2^n a normal float);
  ;; 4 lanes at a time, the last 1-3 as lanes of a vector of copies. Returns 1, having written
  ;; garbage, if some x lies outside (or is NaN): the caller then hands the tensor to tfjs's own Exp.
  (func (export "exp") (param $x i32) (param $y i32) (param $n i32) (result i32)
    (local $at i32) (local $end i32) (local $v v128) (local $in v128) (local $hi v128) ${expLocals()}
    ${EXP_SETUP}
    (local.set $hi ${splat(88)})
    (local.set $in (v128.const i32x4 -1 -1 -1 -1))
    (local.set $end (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (block $done (loop $loop
      (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
      (local.set $v (v128.load (i32.add (local.get $x) (local.get $at))))
      (local.set $in (v128.and (local.get $in)
        (v128.and (f32x4.ge (local.get $v) (local.get $k_low)) (f32x4.le (local.get $v) (local.get $hi)))))
      ${expFma('$v', '$v')}
      (v128.store (i32.add (local.get $y) (local.get $at)) (local.get $v))
      (local.set $at (i32.add (local.get $at) (i32.const 16)))
      (br $loop)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $tailDone (loop $tail
      (br_if $tailDone (i32.ge_u (local.get $at) (local.get $end)))
      (local.set $v (f32x4.splat (f32.load (i32.add (local.get $x) (local.get $at)))))
      (local.set $in (v128.and (local.get $in)
        (v128.and (f32x4.ge (local.get $v) (local.get $k_low)) (f32x4.le (local.get $v) (local.get $hi)))))
      ${expFma('$v', '$v')}
      (f32.store (i32.add (local.get $y) (local.get $at)) (f32x4.extract_lane 0 (local.get $v)))
      (local.set $at (i32.add (local.get $at) (i32.const 4)))
      (br $tail)))
    (i32.eqz (i32x4.all_true (local.get $in))))

  ;; GELU's sigmoid form (simdKernels.ts's RxrlGelu) with expFma, two vectors at a time (their
  ;; exponentials overlap): s = sigmoid(1.702 x) = 1 / (1 + e^-t) for t = 1.702 x >= 0, e^t / (1 + e^t)
  ;; below (e^-|t| never overflows); y = x s. n, a multiple of 8 floats.
  (func (export "gelu") (param $x i32) (param $y i32) (param $s i32) (param $n i32)
    (local $at i32) (local $end i32) (local $k v128) (local $zero v128) ${expLocals(2)}
    ${[0, 1].map((u) => `(local $x${u} v128) (local $t${u} v128) (local $e${u} v128) (local $r${u} v128)`).join(' ')}
    ${EXP_SETUP}
    (local.set $k ${splat(1.702)})
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $done (loop $loop
      (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
      ${[0, 1]
        .map(
          (u) => `
      (local.set $x${u} (v128.load offset=${u * 16} (i32.add (local.get $x) (local.get $at))))
      (local.set $t${u} (f32x4.mul (local.get $x${u}) (local.get $k)))
      (local.set $e${u} (f32x4.neg (f32x4.abs (local.get $t${u}))))
      ${expFma(`$e${u}`, `$e${u}`, u)}`,
        )
        .join('')}
      ${[0, 1]
        .map(
          (u) => `
      (local.set $r${u} (f32x4.div (local.get $k_one) (f32x4.add (local.get $k_one) (local.get $e${u}))))
      (local.set $r${u} (v128.bitselect (local.get $r${u}) (f32x4.mul (local.get $e${u}) (local.get $r${u}))
        (f32x4.ge (local.get $t${u}) (local.get $zero))))
      (v128.store offset=${u * 16} (i32.add (local.get $s) (local.get $at)) (local.get $r${u}))
      (v128.store offset=${u * 16} (i32.add (local.get $y) (local.get $at)) (f32x4.mul (local.get $x${u}) (local.get $r${u})))`,
        )
        .join('')}
      (local.set $at (i32.add (local.get $at) (i32.const 32)))
      (br $loop))))

  ;; Each row i of the [T, T] scores at m becomes softmax_j<=i(scale m[i, j]) (zeros past the diagonal
  ;; to the end of its block of 4; the rest of the row is left as it was).
  (func $softmaxRows (param $m i32) (param $T i32) (param $scale f32)
    (local $i i32) (local $j i32) (local $row i32) (local $max f32) (local $sum f32) (local $v v128) (local $e v128)
    (local $scaleV v128) (local $maxV v128) ${expLocals()}
    ${EXP_SETUP}
    (local.set $scaleV (f32x4.splat (local.get $scale)))
    ${eachCausalRow(
      `
      (local.set $v (v128.const f32x4 -inf -inf -inf -inf))
      (local.set $max (f32.const -inf))
      ${keysUpToQuery(
        `(local.set $v (f32x4.max (local.get $v) (v128.load ${AT_J})))`,
        `(local.set $max (f32.max (local.get $max) (f32.load ${AT_J})))`,
      )}
      (local.set $max (f32.mul (local.get $scale) (f32.max (local.get $max) (f32.max
        (f32.max (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
        (f32.max (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))))
      (local.set $maxV (f32x4.splat (local.get $max)))
      (local.set $v (v128.const f32x4 0 0 0 0))
      (local.set $sum (f32.const 0))
      ${keysUpToQuery(
        `(local.set $e (f32x4.sub (f32x4.mul (v128.load ${AT_J}) (local.get $scaleV)) (local.get $maxV)))
        ${expFma('$e', '$e')}
        (v128.store ${AT_J} (local.get $e))
        (local.set $v (f32x4.add (local.get $v) (local.get $e)))`,
        `(local.set $e (f32x4.splat (f32.sub (f32.mul (f32.load ${AT_J}) (local.get $scale)) (local.get $max))))
        ${expFma('$e', '$e')}
        (f32.store ${AT_J} (f32x4.extract_lane 0 (local.get $e)))
        (local.set $sum (f32.add (local.get $sum) (f32x4.extract_lane 0 (local.get $e))))`,
      )}
      (local.set $sum (f32.div (f32.const 1) (f32.add ${hsum('(local.get $v)')} (local.get $sum))))
      (local.set $v (f32x4.splat (local.get $sum)))
      ${keysUpToQuery(
        `(v128.store ${AT_J} (f32x4.mul (v128.load ${AT_J}) (local.get $v)))`,
        `(f32.store ${AT_J} (f32.mul (f32.load ${AT_J}) (local.get $sum)))`,
      )}`,
      `(f32.store ${AT_J} (f32.const 0))`,
    )})

  ;; Each row i of dP [T, T] at m becomes dS = scale P (dP - sum_j<=i P dP), and pm gets P's row; both
  ;; with zeros past the diagonal to the end of its block of 4 (so P's own zeros are not relied on).
  (func $softmaxGradRows (param $p i32) (param $m i32) (param $pm i32) (param $T i32) (param $scale f32)
    (local $i i32) (local $j i32) (local $row i32) (local $pRow i32) (local $pmRow i32) (local $D f32) (local $v v128)
    (local $d v128) (local $pv v128)
    ${eachCausalRow(
      `
      (local.set $pRow (i32.add (local.get $p) (i32.sub (local.get $row) (local.get $m))))
      (local.set $pmRow (i32.add (local.get $pm) (i32.sub (local.get $row) (local.get $m))))
      (local.set $v (v128.const f32x4 0 0 0 0))
      (local.set $D (f32.const 0))
      ${keysUpToQuery(
        `(local.set $pv (v128.load ${AT_J.replace('$row', '$pRow')}))
        (v128.store ${AT_J.replace('$row', '$pmRow')} (local.get $pv))
        (local.set $v (f32x4.add (local.get $v) (f32x4.mul (v128.load ${AT_J}) (local.get $pv))))`,
        `(f32.store ${AT_J.replace('$row', '$pmRow')} (f32.load ${AT_J.replace('$row', '$pRow')}))
        (local.set $D (f32.add (local.get $D) (f32.mul (f32.load ${AT_J}) (f32.load ${AT_J.replace('$row', '$pRow')}))))`,
      )}
      (local.set $D (f32.add (local.get $D) ${hsum('(local.get $v)')}))
      (local.set $d (f32x4.splat (local.get $D)))
      (local.set $v (f32x4.splat (local.get $scale)))
      ${keysUpToQuery(
        `(v128.store ${AT_J} (f32x4.mul (f32x4.mul (v128.load ${AT_J.replace('$row', '$pmRow')})
          (f32x4.sub (v128.load ${AT_J}) (local.get $d))) (local.get $v)))`,
        `(f32.store ${AT_J} (f32.mul (f32.mul (f32.load ${AT_J.replace('$row', '$pmRow')})
          (f32.sub (f32.load ${AT_J}) (local.get $D))) (local.get $scale)))`,
      )}`,
      `(f32.store ${AT_J} (f32.const 0))
        (f32.store ${AT_J.replace('$row', '$pmRow')} (f32.const 0))`,
    )})

  ;; q, k, v and y are [B*T, H*hd]; P [B, H, T, T]; ap and bp $gemm's scratch for T x max(T, hd) and
  ;; hd x T (T rounded up to 4) + 8 floats.
  (func (export "causalAttention")
    (param $q i32) (param $k i32) (param $v i32) (param $y i32) (param $p i32) (param $ap i32) (param $bp i32)
    (param $B i32) (param $T i32) (param $H i32) (param $hd i32) (param $scale f32) (param $inRow i32) (param $outRow i32)
    (local $bh i32) (local $base i32) (local $yBase i32) (local $tRow i32) (local $pAt i32)
    ${eachHead(`
      ${headGemm(plus('q'), [ROWS, FOUR], plus('k'), [FOUR, ROWS], get('pAt'), T_ROW, [T, T, HD], 'scores')}
      (call $softmaxRows (local.get $pAt) (local.get $T) (local.get $scale))
      ${headGemm(get('pAt'), [T_ROW, FOUR], plus('v'), [ROWS, FOUR], plus('y', 'yBase'), OUT_ROWS, [T, HD, T], 'lower')}`)})

  ;; dy, q, k, v, dq, dk and dv are [B*T, H*hd]; P [B, H, T, T]; m and pm scratch for T x T floats;
  ;; ap and bp as causalAttention's.
  (func (export "causalAttentionGrad")
    (param $dy i32) (param $q i32) (param $k i32) (param $v i32) (param $p i32) (param $m i32) (param $pm i32)
    (param $dq i32) (param $dk i32) (param $dv i32) (param $ap i32) (param $bp i32)
    (param $B i32) (param $T i32) (param $H i32) (param $hd i32) (param $scale f32) (param $inRow i32) (param $outRow i32)
    (local $bh i32) (local $base i32) (local $yBase i32) (local $tRow i32) (local $pAt i32)
    ${eachHead(`
      ${headGemm(plus('dy', 'yBase'), [OUT_ROWS, FOUR], plus('v'), [FOUR, ROWS], get('m'), T_ROW, [T, T, HD], 'scores')}
      (call $softmaxGradRows (local.get $pAt) (local.get $m) (local.get $pm) (local.get $T) (local.get $scale))
      ${headGemm(get('m'), [T_ROW, FOUR], plus('k'), [ROWS, FOUR], plus('dq'), ROWS, [T, HD, T], 'lower')}
      ${headGemm(get('m'), [FOUR, T_ROW], plus('q'), [ROWS, FOUR], plus('dk'), ROWS, [T, HD, T], 'upper')}
      ${headGemm(get('pm'), [FOUR, T_ROW], plus('dy', 'yBase'), [OUT_ROWS, FOUR], plus('dv'), ROWS, [T, HD, T], 'upper')}`)})
`;

/**
 * WAT: $gemm<mr> (see its comment), with micro-kernel blocks of `mr` rows of A. Only $gemm4 may be given
 * a causal mode: the masks, the `scores` start at a panel of B and the softmaxes' zero padding assume
 * blocks of 4 rows.
 */
function gemmFunction(mr: number): string {
  return `
  ;; C [M, N] (rows cRow bytes apart) = A B (+ bias [N] where hasBias), where A's element (i, k) is at
  ;; a + i*aRow + k*aCol and B's (k, n) at b + k*bRow + n*bCol (byte strides); causal: CAUSAL in
  ;; gemmKernel.ts; packB: PACK_B. ap and bp are scratch for the packed panels: M*K floats, and K * (N
  ;; rounded up to 4) (PACK_B.whole; none in place; prepacked: bp holds them) + 8 floats (the last 8
  ;; hold the bias of the current panel of B, or zeros: the micro-kernels start their sums from it).
  ;; cp: 0, or scratch of M * (N rounded up to 4) floats for the sums between blocks of K (sumsScratch).
  (func $gemm${mr} (param $a i32) (param $aRow i32) (param $aCol i32) (param $b i32) (param $bRow i32) (param $bCol i32)
    (param $bias i32) (param $hasBias i32) (param $c i32) (param $cRow i32) (param $M i32) (param $N i32) (param $K i32)
    (param $ap i32) (param $bp i32) (param $packB i32) (param $causal i32) (param $cp i32)
    (local $sc i32) (local $scRow i32) (local $ccRow i32) (local $pc i32) (local $i i32) (local $j i32) (local $w i32) (local $valid i32) (local $p i32) (local $q i32) (local $cc i32)
    (local $biasPanel i32) (local $panel i32) (local $qStep i32) (local $k0 i32) (local $kLen i32) (local $kStart i32)
    (local $kEnd i32) (local $i0 i32) (local $iEnd i32) (local $pk i32) (local $qk i32) (local $aInPlace i32)
    ${rowBlocks(mr)
      .map((h) => `(local $pStep${h} i32) (local $pBlock${h} i32)`)
      .join(' ')}
    ;; A is read where it lies when its rows lie side by side (aRow 4: a transpose) for the causal
    ;; products that start at the diagonal (attention's dS^T Q and P^T dY): a block's 4 rows at one k are
    ;; then one vector, as in a packed panel, and packing the T x T matrix for each product would cost
    ;; about as much as the product.
    (local.set $aInPlace (i32.and (i32.eq (local.get $causal) (i32.const ${CAUSAL.upper})) (i32.eq (local.get $aRow) (i32.const 4))))
    ;; The bias panel lies after the packed panels of one block of K (of all of K when prepacked).
    (local.set $biasPanel (i32.add (local.get $bp) (i32.shl (i32.mul
      (select
        (select (local.get $K) (i32.const ${KC}) (i32.lt_u (local.get $K) (i32.const ${KC})))
        (select (local.get $K) (i32.const 0) (i32.eq (local.get $packB) (i32.const ${PACK_B.prepacked})))
        (i32.eq (local.get $packB) (i32.const ${PACK_B.whole})))
      (i32.and (i32.add (local.get $N) (i32.const 3)) (i32.const -4))) (i32.const 2))))
    (loop $kBlocks
      (local.set $kLen (i32.sub (local.get $K) (local.get $k0)))
      (local.set $kLen (select (local.get $kLen) (i32.const ${KC}) (i32.lt_u (local.get $kLen) (i32.const ${KC}))))
      (if (i32.eq (local.get $packB) (i32.const ${PACK_B.whole}))
        (then (call $packPanels (local.get $b) (local.get $bRow) (local.get $bCol) (local.get $N) (local.get $k0) (local.get $kLen) (local.get $bp))))
      (local.set $i0 (i32.const 0))
      (loop $mBlocks
        (local.set $iEnd (i32.add (local.get $i0) (i32.const ${mcOf(mr)})))
        (local.set $iEnd (select (local.get $iEnd) (local.get $M) (i32.lt_u (local.get $iEnd) (local.get $M))))
        ;; A's panels for rows i0..iEnd and the block's columns of A: of ${rowBlocks(mr).join(', ')} rows, in turn.
        (local.set $p (local.get $ap))
        (local.set $i (local.get $i0))
        (if (local.get $aInPlace)
          (then
            ${rowBlocks(mr)
              .map(
                (h) =>
                  `(local.set $pStep${h} (local.get $aCol)) (local.set $pBlock${h} (i32.const ${h * 4}))`,
              )
              .join('\n            ')}
            (local.set $i (local.get $iEnd)))
          (else
            ${rowBlocks(mr)
              .map(
                (h) =>
                  `(local.set $pStep${h} (i32.const ${h * 4})) (local.set $pBlock${h} (i32.mul (local.get $kLen) (i32.const ${h * 4})))`,
              )
              .join('\n            ')}))
        (block $aDone (loop $aPanels
          (br_if $aDone (i32.ge_u (local.get $i) (local.get $iEnd)))
          (local.set $w (i32.const 1))
          ${rowBlocks(mr)
            .slice(0, -1)
            .reverse()
            .map(
              (h) =>
                `(if (i32.le_u (i32.add (local.get $i) (i32.const ${h})) (local.get $M)) (then (local.set $w (i32.const ${h}))))`,
            )
            .join('\n          ')}
          (call $pack (i32.add (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $aRow))) (i32.mul (local.get $k0) (local.get $aCol)))
            (local.get $kLen) (local.get $aRow) (local.get $aCol) (local.get $w) (local.get $w) (local.get $p))
          (local.set $p (i32.add (local.get $p) (i32.shl (i32.mul (local.get $w) (local.get $kLen)) (i32.const 2))))
          (local.set $i (i32.add (local.get $i) (local.get $w)))
          (br $aPanels)))
        ;; Each panel of B by those rows of A.
        (local.set $q (local.get $bp))
        (if (i32.eq (local.get $packB) (i32.const ${PACK_B.prepacked}))
          (then (local.set $q (i32.add (local.get $bp) (i32.shl (i32.mul (local.get $k0)
            (i32.and (i32.add (local.get $N) (i32.const 3)) (i32.const -4))) (i32.const 2))))))
        (local.set $j (i32.const 0))
        (block $bDone (loop $bPanels
          (br_if $bDone (i32.ge_u (local.get $j) (local.get $N)))
          ${PANEL_WIDTH}
          (if (local.get $packB)
            (then
              (local.set $panel (local.get $q))
              (local.set $qStep (i32.shl (local.get $w) (i32.const 2))))
            (else
              (local.set $panel (i32.add (i32.add (local.get $b) (i32.shl (local.get $j) (i32.const 2))) (i32.mul (local.get $k0) (local.get $bRow))))
              (local.set $qStep (local.get $bRow))))
          (if (i32.eqz (local.get $k0))
            (then
              (call $pack (i32.add (local.get $bias) (i32.shl (local.get $j) (i32.const 2))) (i32.const 1) (i32.const 4) (i32.const 0)
                (local.get $w) (select (local.get $valid) (i32.const 0) (local.get $hasBias)) (local.get $biasPanel))))
          ${overAPanels(mr)}
          (local.set $q (i32.add (local.get $q) (i32.shl (i32.mul (local.get $w) (local.get $kLen)) (i32.const 2))))
          (local.set $j (i32.add (local.get $j) (local.get $w)))
          (br $bPanels)))
        (local.set $i0 (local.get $iEnd))
        (br_if $mBlocks (i32.lt_u (local.get $i0) (local.get $M))))
      (local.set $k0 (i32.add (local.get $k0) (local.get $kLen)))
      (br_if $kBlocks (i32.lt_u (local.get $k0) (local.get $K)))))`;
}

const gemmWat = (shared: boolean): string => `
(module
  ${memoryImport(shared)}
  ${[MR.matmul, MR.causal, 1]
    .map(
      (mr) => `
  ${microKernel(`$block${mr}x8`, mr, 2)}
  ${microKernel(`$block${mr}x4`, mr, 1)}
  ${microKernel(`$block${mr}xPart`, mr, 1, true)}`,
    )
    .join('')}
  ;; Packs \`width\` vectors of a matrix (vector r, element k at src + r*stride + k*kStride) into a
  ;; panel at dst laid out [K][width], in the order it is written; vectors from \`valid\` on are
  ;; zeros (and not read: they may lie past the end of the matrix). Whole panels of an even width take
  ;; a SIMD path: vectors side by side (stride 4: B, or A transposed) are copied 4 floats at a time,
  ;; and vectors along memory (kStride 4: A, or B transposed) are transposed 4 x 4 at a time; a last
  ;; pair of vectors (a panel of 6 rows of A) goes 2 floats at a time, and 4 x 2 at a time.
  (func $pack (param $src i32) (param $K i32) (param $stride i32) (param $kStride i32) (param $width i32) (param $valid i32) (param $dst i32)
    (local $r i32) (local $k i32) (local $at i32) (local $g i32)
    (local $v0 v128) (local $v1 v128) (local $v2 v128) (local $v3 v128) (local $t0 v128) (local $t1 v128) (local $t2 v128) (local $t3 v128)
    (local $fours i32)
    ;; The vectors that go in groups of 4; a pair may follow.
    (local.set $fours (i32.and (local.get $width) (i32.const -4)))
    (if (i32.and (i32.eq (local.get $valid) (local.get $width)) (i32.eqz (i32.and (local.get $width) (i32.const 1))))
      (then
        (if (i32.eq (local.get $stride) (i32.const 4))
          (then
            (block $copied (loop $copy
              (br_if $copied (i32.ge_u (local.get $k) (local.get $K)))
              (local.set $at (i32.add (local.get $src) (i32.mul (local.get $k) (local.get $kStride))))
              (local.set $g (i32.const 0))
              (block $rowDone (loop $row
                (br_if $rowDone (i32.ge_u (local.get $g) (local.get $fours)))
                (v128.store (local.get $dst) (v128.load (i32.add (local.get $at) (i32.shl (local.get $g) (i32.const 2)))))
                (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
                (local.set $g (i32.add (local.get $g) (i32.const 4)))
                (br $row)))
              (if (i32.lt_u (local.get $fours) (local.get $width))
                (then
                  (i64.store (local.get $dst) (i64.load (i32.add (local.get $at) (i32.shl (local.get $g) (i32.const 2)))))
                  (local.set $dst (i32.add (local.get $dst) (i32.const 8)))))
              (local.set $k (i32.add (local.get $k) (i32.const 1)))
              (br $copy)))
            (return)))
        (if (i32.eq (local.get $kStride) (i32.const 4))
          (then
            ;; 4 k at a time: for each group of 4 vectors, 4 loads along k, a 4 x 4 transpose, and
            ;; 4 stores into the rows k..k+3 of the panel.
            (block $fours (loop $four
              (br_if $fours (i32.gt_u (i32.add (local.get $k) (i32.const 4)) (local.get $K)))
              (local.set $g (i32.const 0))
              (block $groupsDone (loop $group
                (br_if $groupsDone (i32.ge_u (local.get $g) (local.get $fours)))
                (local.set $at (i32.add (i32.add (local.get $src) (i32.shl (local.get $k) (i32.const 2)))
                  (i32.mul (local.get $g) (local.get $stride))))
                (local.set $v0 (v128.load (local.get $at)))
                (local.set $v1 (v128.load (i32.add (local.get $at) (local.get $stride))))
                (local.set $v2 (v128.load (i32.add (local.get $at) (i32.shl (local.get $stride) (i32.const 1)))))
                (local.set $v3 (v128.load (i32.add (local.get $at) (i32.mul (local.get $stride) (i32.const 3)))))
                (local.set $t0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $v0) (local.get $v1)))
                (local.set $t1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $v0) (local.get $v1)))
                (local.set $t2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $v2) (local.get $v3)))
                (local.set $t3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $v2) (local.get $v3)))
                (local.set $at (i32.add (local.get $dst) (i32.shl (local.get $g) (i32.const 2))))
                (v128.store (local.get $at)
                  (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t0) (local.get $t2)))
                (local.set $at (i32.add (local.get $at) (i32.shl (local.get $width) (i32.const 2))))
                (v128.store (local.get $at)
                  (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t0) (local.get $t2)))
                (local.set $at (i32.add (local.get $at) (i32.shl (local.get $width) (i32.const 2))))
                (v128.store (local.get $at)
                  (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t1) (local.get $t3)))
                (local.set $at (i32.add (local.get $at) (i32.shl (local.get $width) (i32.const 2))))
                (v128.store (local.get $at)
                  (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t1) (local.get $t3)))
                (local.set $g (i32.add (local.get $g) (i32.const 4)))
                (br $group)))
              (if (i32.lt_u (local.get $fours) (local.get $width))
                (then
                  ;; The pair: 4 k of each, interleaved into 2 floats for each of the rows k..k+3.
                  (local.set $at (i32.add (i32.add (local.get $src) (i32.shl (local.get $k) (i32.const 2)))
                    (i32.mul (local.get $g) (local.get $stride))))
                  (local.set $v0 (v128.load (local.get $at)))
                  (local.set $v1 (v128.load (i32.add (local.get $at) (local.get $stride))))
                  (local.set $t0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $v0) (local.get $v1)))
                  (local.set $t1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $v0) (local.get $v1)))
                  (local.set $at (i32.add (local.get $dst) (i32.shl (local.get $g) (i32.const 2))))
                  (i64.store (local.get $at) (i64x2.extract_lane 0 (local.get $t0)))
                  (local.set $at (i32.add (local.get $at) (i32.shl (local.get $width) (i32.const 2))))
                  (i64.store (local.get $at) (i64x2.extract_lane 1 (local.get $t0)))
                  (local.set $at (i32.add (local.get $at) (i32.shl (local.get $width) (i32.const 2))))
                  (i64.store (local.get $at) (i64x2.extract_lane 0 (local.get $t1)))
                  (local.set $at (i32.add (local.get $at) (i32.shl (local.get $width) (i32.const 2))))
                  (i64.store (local.get $at) (i64x2.extract_lane 1 (local.get $t1)))))
              (local.set $dst (i32.add (local.get $dst) (i32.shl (local.get $width) (i32.const 4))))
              (local.set $k (i32.add (local.get $k) (i32.const 4)))
              (br $four)))))))
    ;; One float at a time: the rest of K, and panels with padding.
    (block $kDone (loop $k
      (br_if $kDone (i32.ge_u (local.get $k) (local.get $K)))
      (local.set $at (i32.add (local.get $src) (i32.mul (local.get $k) (local.get $kStride))))
      (local.set $r (i32.const 0))
      (block $rDone (loop $r
        (br_if $rDone (i32.ge_u (local.get $r) (local.get $width)))
        (f32.store (local.get $dst)
          (if (result f32) (i32.lt_u (local.get $r) (local.get $valid))
            (then (f32.load (local.get $at)))
            (else (f32.const 0))))
        (local.set $at (i32.add (local.get $at) (local.get $stride)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 4)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $r)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br $k))))
  ;; B's panels for its rows k0..k0+kLen (8 columns while 8 are left, then 4, the last padded) at dst.
  (func $packPanels (param $b i32) (param $bRow i32) (param $bCol i32) (param $N i32) (param $k0 i32) (param $kLen i32) (param $dst i32)
    (local $j i32) (local $w i32) (local $valid i32)
    (block $packed (loop $packing
      (br_if $packed (i32.ge_u (local.get $j) (local.get $N)))
      ${PANEL_WIDTH}
      (call $pack (i32.add (i32.add (local.get $b) (i32.mul (local.get $j) (local.get $bCol))) (i32.mul (local.get $k0) (local.get $bRow)))
        (local.get $kLen) (local.get $bCol) (local.get $bRow) (local.get $w) (local.get $valid) (local.get $dst))
      (local.set $dst (i32.add (local.get $dst) (i32.shl (i32.mul (local.get $w) (local.get $kLen)) (i32.const 2))))
      (local.set $j (i32.add (local.get $j) (local.get $w)))
      (br $packing))))
  ;; B [K, N] (element (k, n) at b + k*bRow + n*bCol) packed for PACK_B.prepacked at dst: the panels of
  ;; each block of K, block after block (K * (N rounded up to 4) floats).
  (func (export "packB") (param $b i32) (param $bRow i32) (param $bCol i32) (param $N i32) (param $K i32) (param $dst i32)
    (local $k0 i32) (local $kLen i32)
    (block $done (loop $blocks
      (br_if $done (i32.ge_u (local.get $k0) (local.get $K)))
      (local.set $kLen (i32.sub (local.get $K) (local.get $k0)))
      (local.set $kLen (select (local.get $kLen) (i32.const ${KC}) (i32.lt_u (local.get $kLen) (i32.const ${KC}))))
      (call $packPanels (local.get $b) (local.get $bRow) (local.get $bCol) (local.get $N) (local.get $k0) (local.get $kLen)
        (i32.add (local.get $dst) (i32.shl (i32.mul (local.get $k0) (i32.and (i32.add (local.get $N) (i32.const 3)) (i32.const -4))) (i32.const 2))))
      (local.set $k0 (i32.add (local.get $k0) (local.get $kLen)))
      (br $blocks))))
  ${gemmFunction(MR.matmul)}
  ${gemmFunction(MR.causal)}
  ;; $gemm for tf.matMul: no causal structure (C's rows cRow bytes apart: N floats, or more for a part
  ;; of C's columns, kernelThreads.ts).
  (func (export "gemm") (param $a i32) (param $aRow i32) (param $aCol i32) (param $b i32) (param $bRow i32) (param $bCol i32)
    (param $bias i32) (param $hasBias i32) (param $c i32) (param $cRow i32) (param $M i32) (param $N i32) (param $K i32)
    (param $ap i32) (param $bp i32) (param $packB i32) (param $cp i32)
    (call $gemm${MR.matmul} (local.get $a) (local.get $aRow) (local.get $aCol) (local.get $b) (local.get $bRow) (local.get $bCol)
      (local.get $bias) (local.get $hasBias) (local.get $c) (local.get $cRow) (local.get $M) (local.get $N)
      (local.get $K) (local.get $ap) (local.get $bp) (local.get $packB) (i32.const ${CAUSAL.none})
      (local.get $cp)))
${ATTENTION_WAT}
)`;

/** The kernel module's matmul export (byte addresses and strides; see $gemm). */
type GemmCall = (
  a: number,
  aRow: number,
  aCol: number,
  b: number,
  bRow: number,
  bCol: number,
  bias: number,
  hasBias: number,
  c: number,
  cRow: number,
  M: number,
  N: number,
  K: number,
  ap: number,
  bp: number,
  packB: number,
  cp: number,
) => void;

interface Exports {
  gemm: GemmCall;
  packB(b: number, bRow: number, bCol: number, N: number, K: number, dst: number): void;
  gelu(x: number, y: number, s: number, n: number): void;
  exp(x: number, y: number, n: number): number;
  attend: Attend;
  causalAttention(
    q: number,
    k: number,
    v: number,
    y: number,
    p: number,
    ap: number,
    bp: number,
    ...head: HeadArgs
  ): void;
  causalAttentionGrad(
    dy: number,
    q: number,
    k: number,
    v: number,
    p: number,
    m: number,
    pm: number,
    dq: number,
    dk: number,
    dv: number,
    ap: number,
    bp: number,
    ...head: HeadArgs
  ): void;
}

/** The attention exports' last arguments (headArgs). */
type HeadArgs = [B: number, T: number, H: number, hd: number, scale: number, inRow: number, outRow: number];

/**
 * The kernels replaced: tfjs-backend-wasm's tf.matMul, tf.fused.matMul (GPT's linear layers, with a
 * bias) and tf.exp, and simdKernels.ts's attention (training and decoding) and GELU where it
 * registered them.
 */
const STOCK_REPLACED = ['BatchMatMul', '_FusedMatMul', 'Exp'] as const;
const SIMD_REPLACED = [
  SIMD_KERNELS.attention,
  SIMD_KERNELS.causalAttention,
  SIMD_KERNELS.causalAttentionGrad,
  SIMD_KERNELS.gelu,
] as const;

/**
 * While installed: the kernels this one replaced, the packed weights, and the backend's heap where it
 * is shared (sharedHeap.ts; elsewhere there are no helper threads).
 */
let installed:
  { replaced: tf.KernelConfig[]; weights: PackedWeights; heap: SharedMemory | undefined } | undefined;

/** This module's exports that its kernels hand to helper threads. */
const HELPER_EXPORTS = ['gemm', 'causalAttention', 'causalAttentionGrad', 'gelu'] as const;

/** The threads the kernels run on: the caller's and the helpers'. */
const threadCount = (): number => (helperPool.helpers ? helperPool.helpers.count + 1 : 1);

/** The thread count asked for last (setMatmulThreads), installed or not. */
let threadsWanted = 1;
/** The last change of helpers under way (setMatmulThreads). */
let threadChange: Promise<void> = Promise.resolve();

/** The assembled binaries (for an unshared and a shared heap), kept: wabt takes a while, and a test installs and uninstalls often. */
const binaries = new Map<boolean, Uint8Array>();

/**
 * Replaces the kernels of STOCK_REPLACED and SIMD_REPLACED and registers the fused-qkv attention (call
 * with the backend active, after simdKernels.ts and any other replacement of them); idempotent.
 * Resolves to false where it does not apply: another tfjs-backend-wasm version or its threaded build,
 * or a V8 that will not compile relaxed SIMD.
 */
export async function installGemmKernel(wasmVersion: string): Promise<boolean> {
  if (installed) return true;
  if (!wasmVersion.startsWith('4.') || tf.getBackend() !== 'wasm') return false;
  const memory = (tf.backend() as unknown as WasmBackend).wasm.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) return false;
  const shared = memory.buffer instanceof SharedArrayBuffer;
  const binary = binaries.get(shared) ?? (await assemble(shared));
  binaries.set(shared, binary);
  if (!WebAssembly.validate(binary)) {
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    if (!WebAssembly.validate(binary)) return false;
  }
  const module = await WebAssembly.compile(binary);
  const exports = (await WebAssembly.instantiate(module, { env: { memory } })).exports as unknown as Exports;
  const stock = STOCK_REPLACED.map((name) => tf.getKernel(name, 'wasm'));
  if (!stock.every((kernel) => kernel !== undefined)) return false;
  const simd = SIMD_REPLACED.map((name) => tf.getKernel(name, 'wasm')).filter((k) => k !== undefined);
  const weights = new PackedWeights(tf.backend() as unknown as WasmBackend);
  const replacement = (kernel: tf.KernelConfig): tf.KernelFunc => {
    switch (kernel.kernelName) {
      case SIMD_KERNELS.causalAttention:
        return causalAttentionKernel(exports, false);
      case SIMD_KERNELS.causalAttentionGrad:
        return causalAttentionGradKernel(exports, false);
      case SIMD_KERNELS.gelu:
        return geluKernel(exports, kernel);
      case SIMD_KERNELS.attention:
        return cachedAttentionKernel(exports);
      case 'Exp':
        return expKernel(exports, kernel);
      default:
        return gemmKernel(exports, kernel, weights);
    }
  };
  for (const kernel of [...stock, ...simd]) {
    tf.unregisterKernel(kernel.kernelName, 'wasm');
    tf.registerKernel({
      kernelName: kernel.kernelName,
      backendName: 'wasm',
      kernelFunc: replacement(kernel),
    });
  }
  tf.registerKernel({
    kernelName: QKV_KERNELS.forward,
    backendName: 'wasm',
    kernelFunc: causalAttentionKernel(exports, true),
  });
  tf.registerKernel({
    kernelName: QKV_KERNELS.gradient,
    backendName: 'wasm',
    kernelFunc: causalAttentionGradKernel(exports, true),
  });
  const heap = shared ? (memory as unknown as SharedMemory) : undefined;
  if (heap) helperPool.modules.set('gemmKernel', { module, exports: HELPER_EXPORTS });
  installed = { replaced: [...stock, ...simd], weights, heap };
  await setMatmulThreads(threadsWanted);
  return true;
}

/** Puts back the kernels it replaced (for tests and benches that compare the two). */
export function uninstallGemmKernel(): void {
  if (!installed) return;
  for (const name of Object.values(QKV_KERNELS)) tf.unregisterKernel(name, 'wasm');
  for (const kernel of installed.replaced) {
    tf.unregisterKernel(kernel.kernelName, 'wasm');
    tf.registerKernel(kernel);
  }
  installed.weights.sweep(true);
  void helperPool.helpers?.close();
  helperPool.helpers = undefined;
  helperPool.modules.delete('gemmKernel');
  installed = undefined;
}

/**
 * Runs the wasm backend's large matmuls (and rxrl's other kernels that cut their work) on `count`
 * threads: this one and count - 1 helpers (kernelThreads.ts), where the backend's heap is shared. 1
 * (the default) stops the helpers. Before the kernels are installed it is remembered for when they
 * are. Results do not depend on the count.
 */
export function setMatmulThreads(count: number): Promise<void> {
  if (!Number.isInteger(count) || count < 1) {
    return Promise.reject(new Error(`matmul threads must be a whole number >= 1, got ${count}`));
  }
  threadsWanted = count;
  // One change at a time, each to the count wanted when it runs.
  const change = threadChange.then(applyThreads);
  threadChange = change.catch(() => undefined);
  return change;
}

/** Makes the helpers match threadsWanted; replaces broken ones (KernelHelpers.broken). */
async function applyThreads(): Promise<void> {
  const current = installed;
  const count = threadsWanted;
  if (!current || (threadCount() === count && !helperPool.helpers?.broken)) return;
  const old = helperPool.helpers;
  helperPool.helpers = undefined;
  await old?.close();
  // Uninstalled meanwhile: nothing to give helpers to.
  if (count === 1 || current.heap === undefined || installed !== current) return;
  helperPool.helpers = new KernelHelpers([...helperPool.modules.values()], current.heap, count - 1);
}

/** The kernels' threads, and how many calls they have cut between them so far (for tests and benches). */
export function matmulThreads(): { count: number; callsCut: number } {
  return {
    count: installed ? threadCount() : threadsWanted,
    callsCut: helperPool.helpers?.shared ?? 0,
  };
}

/** How many weight matrices the matmul holds packed for decoding (see PackedWeights; for tests). */
export function packedWeightsHeld(): number {
  return installed?.weights.size ?? 0;
}

/** The kernels of causal attention on the q/k/v projection's output as it is (no split), which only this module has. */
const QKV_KERNELS = { forward: 'RxrlCausalAttentionQkv', gradient: 'RxrlCausalAttentionQkvGrad' } as const;

/**
 * Causal self-attention straight from the q/k/v projection: qkv [B*T, 3 H*hd] (q, k and v side by side,
 * each H heads of hd) -> y [B*T, H*hd] and the probabilities P [B, H, T, T] for the gradient. What
 * simdKernels.ts's causalAttention computes from the three split out, without the split (three copies)
 * and, in the gradient, the concat that joins dq, dk and dv back. Only while this module is installed
 * (gemmKernelInstalled()).
 */
export function causalAttentionQkv(
  qkv: tf.Tensor2D,
  { B, T, H }: { B: number; T: number; H: number },
  scale: number,
): [tf.Tensor2D, tf.Tensor4D] {
  const hd = qkvHeadSize('causalAttentionQkv', qkv, { B, T, H });
  return tf.engine().runKernel(QKV_KERNELS.forward, { qkv }, { B, T, H, hd, scale }) as unknown as [
    tf.Tensor2D,
    tf.Tensor4D,
  ];
}

/** The gradient of causalAttentionQkv with respect to qkv, from dy [B*T, H*hd] and its P. */
export function causalAttentionQkvGrad(
  dy: tf.Tensor,
  qkv: tf.Tensor,
  p: tf.Tensor,
  { B, T, H }: { B: number; T: number; H: number },
  scale: number,
): tf.Tensor2D {
  const hd = qkvHeadSize('causalAttentionQkvGrad', qkv, { B, T, H });
  const expect = expectShape('causalAttentionQkvGrad');
  expect('dy', dy, [B * T, H * hd]);
  expect('p', p, [B, H, T, T]);
  return tf.engine().runKernel(QKV_KERNELS.gradient, { dy, qkv, p }, { B, T, H, hd, scale }) as tf.Tensor2D;
}

function qkvHeadSize(op: string, qkv: tf.Tensor, { B, T, H }: { B: number; T: number; H: number }): number {
  if (!gemmKernelInstalled())
    throw new Error(`${op}: rxrl's relaxed-SIMD kernels are not installed (wasm backend only)`);
  const width = qkv.shape[1] ?? 0;
  if (qkv.dtype !== 'float32' || qkv.rank !== 2 || qkv.shape[0] !== B * T || width % (3 * H) !== 0)
    throw new Error(
      `${op}: qkv must be float32 [${B * T}, 3 * ${H} heads * head size], got ${qkv.dtype} [${qkv.shape.join(', ')}]`,
    );
  return width / (3 * H);
}

/** Whether matmuls of at least GEMM_MIN_ROWS rows run on this kernel. */
export function gemmKernelInstalled(): boolean {
  return installed !== undefined && tf.getBackend() === 'wasm';
}

/** The kernels' binary, for the wasm backend's memory, unshared or shared (sharedHeap.ts). */
async function assemble(shared: boolean): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const wat = wabt.parseWat('gemmKernel.wat', gemmWat(shared), {
    simd: true,
    relaxed_simd: true,
    threads: true,
  });
  try {
    return wat.toBinary({}).buffer;
  } finally {
    wat.destroy();
  }
}

/**
 * Weight matrices packed for decoding (PACK_B.prepacked), by the dataId of the tensor packed. Decoding
 * multiplies 16-odd rows by the same weights at every step; read in place, a panel of B is K rows far
 * apart in memory, which the hardware prefetcher does not follow; packed, it is one run of memory.
 * tfjs never changes the values under a dataId (a Variable's assign takes the new tensor's dataId), so
 * a packed copy is right for as long as its dataId lives, for the layout it was packed from (a reshape
 * shares the dataId; a product may read B transposed). The copies of dataIds the backend has since
 * freed are freed at the next matmul. A matrix is packed the second time it is seen, so that one-off
 * products (activations) pack nothing, and only while the copies hold less than MAX_FLOATS.
 */
class PackedWeights {
  static readonly MAX_FLOATS = 64 * 2 ** 20;
  private readonly copies = new Map<
    object,
    { buffer: tf.TensorInfo; at: number; floats: number; layout: string }
  >();
  private seen = new WeakSet<object>();
  private floats = 0;

  constructor(private readonly backend: WasmBackend) {}

  /**
   * The address of b [K, N] (element (k, n) at bRow k + bCol n bytes) packed; 'next': not packed yet,
   * but from its next use on; undefined: not packed, nor ever for this layout.
   */
  packed(
    b: tf.TensorInfo,
    K: number,
    N: number,
    bRow: number,
    bCol: number,
    exports: Exports,
    io: KernelIO,
  ): number | 'next' | undefined {
    const copy = this.copies.get(b.dataId);
    // A reshape shares its input's dataId, and a product may read B transposed: a copy serves only
    // the layout it was packed from.
    const layout = `${K}x${N}:${bRow}:${bCol}`;
    if (copy) return copy.layout === layout ? copy.at : undefined;
    const floats = K * Math.ceil(N / 4) * 4 + 8;
    if (this.floats + floats > PackedWeights.MAX_FLOATS) return undefined;
    if (!this.seen.has(b.dataId)) {
      this.seen.add(b.dataId);
      return 'next';
    }
    // Made on the backend directly, not with io.output: the copy outlives this call, even one that
    // throws (wasmKernel frees what a failed call made with io.output).
    const buffer = this.backend.makeOutput([floats], 'float32');
    const at = io.at(buffer);
    exports.packB(io.at(b), bRow, bCol, N, K, at);
    this.copies.set(b.dataId, { buffer, at, floats, layout });
    this.floats += floats;
    return at;
  }

  /** How many packed copies are held (for tests). */
  get size(): number {
    return this.copies.size;
  }

  /** Frees the copies of dataIds the backend no longer holds (all of them with `all`). */
  sweep(all = false): void {
    const { dataIdMap } = this.backend;
    for (const [dataId, copy] of this.copies) {
      if (all || !dataIdMap.has(dataId)) {
        this.backend.disposeData(copy.buffer.dataId);
        this.copies.delete(dataId);
        this.floats -= copy.floats;
      }
    }
    if (all) this.seen = new WeakSet();
  }
}

/** A product is split between threads from this many multiply-adds (M N K) on: about 0.3 ms on one. */
export const THREADED_WORK = 1 << 23;

/** The kernel in place of `previous` (BatchMatMul or _FusedMatMul), which keeps what it does not take. */
function gemmKernel(exports: Exports, previous: tf.KernelConfig, weights: PackedWeights): tf.KernelFunc {
  return wasmKernel((io) => {
    // Every matmul frees the packed copies of weights gone since the last (a walk of a few entries).
    weights.sweep();
    const { inputs, attrs: numbers, output, free, at, fallBack } = io;
    const attrs = numbers as unknown as { transposeA?: boolean; transposeB?: boolean; activation?: string };
    const { a, b, bias } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo; bias?: tf.TensorInfo };
    const transposeA = attrs.transposeA === true;
    const transposeB = attrs.transposeB === true;
    const batch = a.shape.slice(0, -2);
    const [aRows, aCols] = a.shape.slice(-2) as [number, number];
    const [bRows, bCols] = b.shape.slice(-2) as [number, number];
    const entries = batch.reduce((n, s) => n * s, 1);
    const [M, K] = transposeA ? [aCols, aRows] : [aRows, aCols];
    const N = transposeB ? bRows : bCols;
    // tfjs-backend-wasm 4.22's own _FusedMatMul adds the bias wrongly when it does not hand the
    // matmul to XNNPACK (a transpose flag, or a batch of more than 1), so those stay here at any size.
    const stockIsWrong = bias !== undefined && (transposeA || transposeB || entries > 1);
    // Activations, broadcast batches and biases other than one per column stay with the kernel
    // this one replaced.
    if (
      a.dtype !== 'float32' ||
      b.dtype !== 'float32' ||
      !tf.util.arraysEqual(batch, b.shape.slice(0, -2)) ||
      (transposeB ? bCols : bRows) !== K ||
      N === 0 ||
      K === 0 ||
      (attrs.activation !== undefined && attrs.activation !== 'linear') ||
      inputs.preluActivationWeights !== undefined ||
      (bias !== undefined && (bias.dtype !== 'float32' || tf.util.sizeFromShape(bias.shape) !== N))
    ) {
      return fallBack();
    }
    // Byte strides of A's (row, k) and B's (k, column), through the transposes.
    const [aRow, aCol] = transposeA ? [4, aCols * 4] : [aCols * 4, 4];
    const [bRow, bCol] = transposeB ? [4, bCols * 4] : [bCols * 4, 4];
    // B is packed for many rows: packing costs little beside 2 M flops per element of B, and a panel
    // read in place is K rows a power of 2 bytes apart for many shapes (N = 512: 2 KiB), which maps
    // them to few cache sets (measured: half the speed). Few rows (decoding) read B from a copy packed
    // once (PackedWeights) from its second use on; the first time, where it lies if its rows are whole
    // vectors of 4 columns, else (transposed, or N not a multiple of 4: the output head) packed for
    // this product alone, so that the first product's floats are the later ones' (on the kernel this
    // one replaced, a first sampling call's log-probs differed from later calls' in the last bits).
    // A B that will not be packed (a batch, or past the copies' cap) goes to that kernel every time,
    // as packing B for one product of few rows costs about as much as the product.
    const few = M < GEMM_MIN_ROWS;
    const packing = few && entries === 1 ? weights.packed(b, K, N, bRow, bCol, exports, io) : undefined;
    const prepacked = typeof packing === 'number' ? packing : undefined;
    const inPlace = few && prepacked === undefined && !transposeB && N % 4 === 0;
    if (few && prepacked === undefined && !inPlace && packing !== 'next' && !stockIsWrong) return fallBack();
    const mode = prepacked !== undefined ? PACK_B.prepacked : inPlace ? PACK_B.inPlace : PACK_B.whole;
    const out = output([...batch, M, N]);
    const [aAt, bAt, outAt] = [at(a), at(b), at(out)];
    const biasAt = bias ? at(bias) : 0;
    // $gemm's arguments for rows [rowAt, rowAt + rows) and columns [colAt, colAt + cols) of batch entry e,
    // with scratch [ap, bp, cp] (scratchFor).
    const gemmArgs = (
      e: number,
      rowAt: number,
      rows: number,
      colAt: number,
      cols: number,
      [ap, bp, cp]: number[],
    ): number[] => [
      aAt + e * aRows * aCols * 4 + rowAt * aRow,
      aRow,
      aCol,
      bAt + e * bRows * bCols * 4 + colAt * bCol,
      bRow,
      bCol,
      biasAt + colAt * 4,
      bias ? 1 : 0,
      outAt + e * M * N * 4 + (rowAt * N + colAt) * 4,
      N * 4,
      rows,
      cols,
      K,
      ap!,
      bp!,
      mode,
      cp!,
    ];
    // Scratch for `rows` x `cols` of the product: A's packed block, B's packed panels (with their bias
    // panel; none when B is read in place or prepacked), and, with more than one block of K, the sums
    // between blocks. Those go to a scratch copy of C in panels (each panel's rows side by side), not to
    // C, where a block of rows is rows N floats apart: reading them back there stalled on cache misses
    // (the hardware prefetcher does not follow strides of kilobytes across pages), 1.03-1.07x on the
    // learner's products, measured side by side. The sums are the same. Few rows (decoding) stay in
    // cache in C, and would only pay for the scratch.
    const scratch: tf.TensorInfo[] = [];
    const take = (floats: number): number => {
      scratch.push(output([floats]));
      return at(scratch[scratch.length - 1]!);
    };
    const scratchFor = (rows: number, cols: number): number[] => [
      take(Math.min(rows, GEMM_BLOCKS.rows) * Math.min(K, KC)),
      prepacked ?? take((mode === PACK_B.whole ? Math.min(K, KC) * Math.ceil(cols / 4) * 4 : 0) + 8),
      K > KC && !few ? take(sumsScratch(rows, cols)) : 0,
    ];
    // A large product is cut in parts of whole rows of C (or whole panels of its columns, where it has
    // more columns than rows), one per thread, each computed in place by the same kernel with its own
    // scratch; every sum is the one a single thread makes.
    const { helpers } = helperPool;
    if (helpers && entries === 1 && mode === PACK_B.whole && M * N * K >= THREADED_WORK) {
      const byRows = M >= N;
      runCut(helpers, exports, 'gemm', byRows ? M : N, byRows ? MR.matmul : 8, (start, end) =>
        byRows
          ? gemmArgs(0, start, end - start, 0, N, scratchFor(end - start, N))
          : gemmArgs(0, 0, M, start, end - start, scratchFor(M, end - start)),
      );
    } else {
      const whole = scratchFor(M, N);
      for (let e = 0; e < entries; e++)
        exports.gemm(...(gemmArgs(e, 0, M, 0, N, whole) as Parameters<GemmCall>));
    }
    // (Should a part throw, wasmKernel frees all of these, unless a helper is stuck.)
    scratch.forEach(free);
    return out;
  }, previous);
}

/**
 * Floats of scratch for the sums of an M x N product between blocks of K (gemmKernel.ts's `cp`):
 * C in panels of its columns, each panel's rows side by side.
 */
function sumsScratch(M: number, N: number): number {
  return M * Math.ceil(N / 4) * 4;
}

/** The size of $gemm's scratch for one head's products: [ap, bp] floats (see causalAttention's WAT). */
function headScratch(T: number, hd: number): [number, number] {
  return [T * Math.max(T, hd), hd * Math.ceil(T / 4) * 4 + 8];
}

/**
 * Causal attention on $gemm: RxrlCausalAttention (simdKernels.ts's causalAttention: q, k, v [B*T, H*hd])
 * or, `fused`, RxrlCausalAttentionQkv (the projection's [B*T, 3 H*hd], q, k and v side by side).
 */
function causalAttentionKernel(exports: Exports, fused: boolean): tf.KernelFunc {
  return wasmKernel((io) => {
    const { inputs, attrs, output, at } = io;
    const { B, T, H, hd } = attrs as Record<'B' | 'T' | 'H' | 'hd', number>;
    const [q, k, v] = headInputs(inputs, fused, H * hd, at);
    const [y, p] = [output([B * T, H * hd]), output([B, H, T, T])];
    const args = headArgs(attrs, fused);
    const [inRow, outRow] = [args[5], args[6]];
    bySequences(exports, 'causalAttention', attrs, headScratch(T, hd), io, (b0, b1, [ap, bp]) => {
      const rows = b0 * T;
      return [
        q + rows * inRow,
        k + rows * inRow,
        v + rows * inRow,
        at(y) + rows * outRow,
        at(p) + b0 * H * T * T * 4,
        ap!,
        bp!,
        b1 - b0,
        ...args.slice(1),
      ];
    });
    return [y, p];
  });
}

/**
 * Runs the attention export `fn` over the B sequences: on this thread alone, or cut between it and
 * the helpers by whole sequences where the attention is large enough (THREADED_WORK multiply-adds per
 * product of scores, B H T^2 hd). Each part gets scratch of `scratch` floats each, and its arguments
 * from args(b0, b1, the scratch's addresses): the addresses moved to sequence b0, and b1 - b0 for B.
 */
function bySequences(
  exports: Exports,
  fn: string,
  attrs: Record<string, number>,
  scratch: number[],
  { output, free, at }: Pick<KernelIO, 'output' | 'free' | 'at'>,
  args: (b0: number, b1: number, scratch: number[]) => number[],
): void {
  const { B, T, H, hd } = attrs as Record<'B' | 'T' | 'H' | 'hd', number>;
  const parts: tf.TensorInfo[] = [];
  runCut(helpersFor(B * H * T * T * hd, THREADED_WORK), exports, fn, B, 1, (b0, b1) => {
    const part = scratch.map((n) => output([n]));
    parts.push(...part);
    return args(b0, b1, part.map(at));
  });
  parts.forEach(free);
}

/**
 * Its gradient: RxrlCausalAttentionGrad ([dq, dk, dv], each [B*T, H*hd]) or, `fused`,
 * RxrlCausalAttentionQkvGrad (one [B*T, 3 H*hd], the gradient of the projection's output).
 */
function causalAttentionGradKernel(exports: Exports, fused: boolean): tf.KernelFunc {
  return wasmKernel((io) => {
    const { inputs, attrs, output, at } = io;
    const { B, T, H, hd } = attrs as Record<'B' | 'T' | 'H' | 'hd', number>;
    const [q, k, v] = headInputs(inputs, fused, H * hd, at);
    const grads = fused ? [output([B * T, 3 * H * hd])] : [0, 1, 2].map(() => output([B * T, H * hd]));
    const [dq, dk, dv] = headInputs(
      fused ? { qkv: grads[0] } : { q: grads[0], k: grads[1], v: grads[2] },
      fused,
      H * hd,
      at,
    );
    const args = headArgs(attrs, fused);
    const [inRow, outRow] = [args[5], args[6]];
    const scratch = [T * T, T * T, ...headScratch(T, hd)];
    bySequences(exports, 'causalAttentionGrad', attrs, scratch, io, (b0, b1, [m, pm, ap, bp]) => {
      const [i, o] = [b0 * T * inRow, b0 * T * outRow];
      return [
        at(inputs.dy!) + o,
        q + i,
        k + i,
        v + i,
        at(inputs.p!) + b0 * H * T * T * 4,
        m!,
        pm!,
        dq + i,
        dk + i,
        dv + i,
        ap!,
        bp!,
        b1 - b0,
        ...args.slice(1),
      ];
    });
    return fused ? grads[0]! : grads;
  });
}

/**
 * The attention exports' last arguments: B, T, H, hd, scale, and the bytes between rows of q/k/v (and
 * of their gradients) and of y (and dy).
 */
function headArgs(attrs: Record<string, number>, fused: boolean): HeadArgs {
  const { B, T, H, hd, scale } = attrs as Record<'B' | 'T' | 'H' | 'hd' | 'scale', number>;
  const rowBytes = H * hd * 4;
  return [B, T, H, hd, scale, fused ? 3 * rowBytes : rowBytes, rowBytes];
}

/** The addresses of q, k and v: three tensors, or (fused) three column ranges of one qkv. */
function headInputs(
  inputs: Record<string, tf.TensorInfo | undefined>,
  fused: boolean,
  width: number,
  at: (t: tf.TensorInfo) => number,
): [number, number, number] {
  if (!fused) return [at(inputs.q!), at(inputs.k!), at(inputs.v!)];
  const qkv = at(inputs.qkv!);
  return [qkv, qkv + width * 4, qkv + 2 * width * 4];
}

/** RxrlGelu (simdKernels.ts's gelu) with FMAs, for sizes that are a multiple of 8 (others: `previous`). */
function geluKernel(exports: Exports, previous: tf.KernelConfig): tf.KernelFunc {
  return wasmKernel(({ inputs: { x }, output, at, fallBack }) => {
    const n = tf.util.sizeFromShape(x!.shape);
    if (n % 8 !== 0) return fallBack();
    const [y, s] = [output(x!.shape), output(x!.shape)];
    // Large ones cut in runs of elements, multiples of 8, one per thread.
    runCut(helpersFor(n), exports, 'gelu', n, 8, (start, end) => [
      at(x!) + start * 4,
      at(y) + start * 4,
      at(s) + start * 4,
      end - start,
    ]);
    return [y, s];
  }, previous);
}

/**
 * tf.exp on float32 with expFma where every x lies in [-87, 88] (the log-softmax's and entropy's
 * exponentials, ~10x tfjs-backend-wasm's scalar loop); anything else goes to `previous`.
 */
function expKernel(exports: Exports, previous: tf.KernelConfig): tf.KernelFunc {
  return wasmKernel(({ inputs: { x }, output, free, at, fallBack }) => {
    if (x!.dtype !== 'float32') return fallBack();
    const y = output(x!.shape);
    if (exports.exp(at(x!), at(y), tf.util.sizeFromShape(x!.shape)) === 0) return y;
    free(y);
    return fallBack();
  }, previous);
}
