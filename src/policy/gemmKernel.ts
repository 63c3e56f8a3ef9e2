/**
 * rxrl's matmul for tfjs's wasm backend: BatchMatMul with fused multiply-adds (WebAssembly's relaxed
 * SIMD `f32x4.relaxed_madd`, which V8 compiles to `vfmadd231ps` where the CPU has FMA).
 *
 * Why: dense matmuls are most of a learner step on the wasm backend (about 600 of 860 ms of kernel
 * time for the ~1M model's 16 x 128 tokens). tfjs-backend-wasm hands them to XNNPACK, whose wasm
 * build has only SIMD128's separate multiply and add. Measured here in one process: XNNPACK 20-33
 * GFLOP/s on the learner's shapes, this kernel 27-37, against a peak of 59 for FMAs alone
 * (bench/kernels.ts measures the learner step and sampling with and without it).
 *
 * How: C = A B for each batch entry. A is packed into panels of 4 rows ([K][4] floats, rows past the
 * last whole panel one at a time); B into panels of 8 columns ([K][8], then 4, the last one padded
 * with zeros), except for few rows (GEMM_MIN_ROWS), where it may be read where it lies. A
 * micro-kernel keeps a 4 x 8 block of C in 8 registers while it runs down K: per k, two loads of B,
 * four broadcast loads of A and eight FMAs. Packing reads A and B through strides, so the transposed
 * cases (A^T B and A B^T, the gradients) cost no transpose. A bias (tf.fused.matMul's) is where the
 * sums start. The loop over K is deliberately not unrolled: V8's optimising compiler hoists an
 * unrolled body's loads above its FMAs and spills registers (seen in its disassembly), which made it
 * slower.
 *
 * Each element of C sums its K products in order, whatever row or column it is, so a row's result
 * does not depend on the other rows of the batch (the sampler's padding invariance relies on that).
 *
 * V8 ships relaxed SIMD enabled from 11.4 (Node 21 on); Node 20's V8 11.3 has it behind
 * `--experimental-wasm-relaxed-simd`, which installGemmKernel sets (V8 reads wasm feature flags
 * when it compiles a module). Where the module still does not compile, the kernel is not installed
 * and matmuls stay on XNNPACK. (On an x86 CPU without FMA, before 2013's, V8 would compile
 * relaxed_madd to a multiply and an add, and this kernel would be slower than XNNPACK.) Like simdKernels.ts it runs on the wasm backend's own memory, so it
 * is installed only on tfjs-backend-wasm 4.x's single-threaded build.
 */
import v8 from 'node:v8';
import * as tf from '@tensorflow/tfjs';
import wabtInit from 'wabt';
import type { KernelArgs, WasmBackend } from './simdKernels.ts';

/** The WebAssembly JS API, a Node global that the ES library this project compiles against does not type. */
declare const WebAssembly: {
  Memory: abstract new (...args: never[]) => { buffer: ArrayBuffer | SharedArrayBuffer };
  validate(bytes: Uint8Array): boolean;
  compile(bytes: Uint8Array): Promise<object>;
  instantiate(module: object, imports: object): Promise<{ exports: object }>;
};

/** Rows of A per micro-kernel block. */
const MR = 4;

/**
 * From this many rows on, B is packed. Below it, B is read where it lies if its rows are whole
 * vectors of 4 floats and it is not transposed (decoding: 1.26x XNNPACK's on the sampler's weights
 * with 16 rows); otherwise the matmul goes to the kernel this one replaced, as packing B on every
 * call would cost more than it saves (XNNPACK keeps a weight matrix packed between calls).
 */
export const GEMM_MIN_ROWS = 64;

/**
 * WAT: the micro-kernel `name` for a block of `mr` rows of A (a panel at $p, [K][mr]) and `nv`
 * vectors of 4 columns of B (a panel at $q, [K][4 nv]), storing into C at $c (rows $cRow bytes
 * apart). With `partial`, only the first $valid (1-3) columns of its single vector are stored.
 */
function microKernel(name: string, mr: number, nv: number, partial = false): string {
  const acc = (r: number, n: number): string => `$c${r}_${n}`;
  const each = (f: (r: number, n: number) => string): string =>
    Array.from({ length: mr }, (_, r) => Array.from({ length: nv }, (_, n) => f(r, n)).join('\n')).join('\n');
  const rowAt = (r: number): string =>
    `(i32.add (local.get $c) (i32.mul (i32.const ${r}) (local.get $cRow)))`;
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
  (func ${name} (param $p i32) (param $q i32) (param $c i32) (param $K i32) (param $cRow i32) (param $valid i32) (param $bias i32) (param $qStep i32)
    ${each((r, n) => `(local ${acc(r, n)} v128)`)}
    ${Array.from({ length: nv }, (_, n) => `(local $b${n} v128)`).join(' ')}
    (local $a v128) (local $k i32)
    ${each((r, n) => `(local.set ${acc(r, n)} (v128.load offset=${n * 16} (local.get $bias)))`)}
    (local.set $k (local.get $K))
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $k)))
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
      (local.set $p (i32.add (local.get $p) (i32.const ${mr * 4})))
      (local.set $q (i32.add (local.get $q) (local.get $qStep)))
      (local.set $k (i32.sub (local.get $k) (i32.const 1)))
      (br $next)))
    ${store})`;
}

/**
 * WAT: a call of the micro-kernel for a block of `rows` rows (4 or 1) of A against the current panel
 * of B: 8 columns, 4, or 1-3 of a padded panel.
 */
function blockCall(rows: number): string {
  const args = `(local.get $p) (local.get $panel) (local.get $cc) (local.get $K) (local.get $cRow) (local.get $valid)
          (local.get $biasPanel) (local.get $qStep)`;
  return `
      (if (i32.eq (local.get $valid) (i32.const 8))
        (then (call $block${rows}x8 ${args}))
        (else (if (i32.eq (local.get $valid) (i32.const 4))
          (then (call $block${rows}x4 ${args}))
          (else (call $block${rows}xPart ${args})))))`;
}

/**
 * WAT: the micro-kernels' calls for one panel of B (its first column $j, $valid columns) over all
 * of A's panels.
 */
const OVER_A_PANELS = `
    (local.set $p (local.get $ap))
    (local.set $cc (i32.add (local.get $c) (i32.shl (local.get $j) (i32.const 2))))
    (local.set $i (i32.const 0))
    (block $blocksDone (loop $blocks
      (br_if $blocksDone (i32.gt_u (i32.add (local.get $i) (i32.const ${MR})) (local.get $M)))${blockCall(MR)}
      (local.set $p (i32.add (local.get $p) (i32.mul (local.get $K) (i32.const ${MR * 4}))))
      (local.set $cc (i32.add (local.get $cc) (i32.mul (local.get $cRow) (i32.const ${MR}))))
      (local.set $i (i32.add (local.get $i) (i32.const ${MR})))
      (br $blocks)))
    (block $rowsDone (loop $rows
      (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $M)))${blockCall(1)}
      (local.set $p (i32.add (local.get $p) (i32.shl (local.get $K) (i32.const 2))))
      (local.set $cc (i32.add (local.get $cc) (local.get $cRow)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $rows)))`;

const GEMM_WAT = `
(module
  (import "env" "memory" (memory 1))
  ${microKernel(`$block${MR}x8`, MR, 2)}
  ${microKernel(`$block${MR}x4`, MR, 1)}
  ${microKernel(`$block${MR}xPart`, MR, 1, true)}
  ${microKernel('$block1x8', 1, 2)}
  ${microKernel('$block1x4', 1, 1)}
  ${microKernel('$block1xPart', 1, 1, true)}
  ;; Packs \`width\` vectors of a matrix (vector r, element k at src + r*stride + k*kStride) into a
  ;; panel at dst laid out [K][width], in the order it is written; vectors from \`valid\` on are
  ;; zeros (and not read: they may lie past the end of the matrix). Whole panels take a SIMD path:
  ;; vectors side by side (stride 4: B, or A transposed) are copied 4 floats at a time, and vectors
  ;; along memory (kStride 4: A, or B transposed) are transposed 4 x 4 at a time.
  (func $pack (param $src i32) (param $K i32) (param $stride i32) (param $kStride i32) (param $width i32) (param $valid i32) (param $dst i32)
    (local $r i32) (local $k i32) (local $at i32) (local $g i32)
    (local $v0 v128) (local $v1 v128) (local $v2 v128) (local $v3 v128) (local $t0 v128) (local $t1 v128) (local $t2 v128) (local $t3 v128)
    (if (i32.and (i32.eq (local.get $valid) (local.get $width)) (i32.eqz (i32.and (local.get $width) (i32.const 3))))
      (then
        (if (i32.eq (local.get $stride) (i32.const 4))
          (then
            (block $copied (loop $copy
              (br_if $copied (i32.ge_u (local.get $k) (local.get $K)))
              (local.set $at (i32.add (local.get $src) (i32.mul (local.get $k) (local.get $kStride))))
              (local.set $g (i32.const 0))
              (block $rowDone (loop $row
                (br_if $rowDone (i32.ge_u (local.get $g) (local.get $width)))
                (v128.store (local.get $dst) (v128.load (i32.add (local.get $at) (i32.shl (local.get $g) (i32.const 2)))))
                (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
                (local.set $g (i32.add (local.get $g) (i32.const 4)))
                (br $row)))
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
                (br_if $groupsDone (i32.ge_u (local.get $g) (local.get $width)))
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
  ;; C [M, N] (rows N floats apart) = A B (+ bias [N] where hasBias), where A's element (i, k) is at
  ;; a + i*aRow + k*aCol and B's (k, n) at b + k*bRow + n*bCol (byte strides). ap and bp are scratch
  ;; for the packed panels: M*K floats, and K * (N rounded up to 4) + 8 floats (the last 8 hold the
  ;; bias of the current panel of B, or zeros: the micro-kernels start their sums from it).
  (func (export "gemm") (param $a i32) (param $aRow i32) (param $aCol i32) (param $b i32) (param $bRow i32) (param $bCol i32)
    (param $bias i32) (param $hasBias i32) (param $c i32) (param $M i32) (param $N i32) (param $K i32) (param $ap i32) (param $bp i32) (param $packB i32)
    (local $i i32) (local $j i32) (local $w i32) (local $valid i32) (local $p i32) (local $q i32) (local $cc i32) (local $cRow i32)
    (local $biasPanel i32) (local $panel i32) (local $qStep i32)
    (local.set $biasPanel (i32.add (local.get $bp) (select
      (i32.shl (i32.mul (local.get $K) (i32.and (i32.add (local.get $N) (i32.const 3)) (i32.const -4))) (i32.const 2))
      (i32.const 0)
      (local.get $packB))))
    (local.set $cRow (i32.shl (local.get $N) (i32.const 2)))
    ;; A's panels: 4 rows while 4 are left, then one row each.
    (local.set $p (local.get $ap))
    (block $aDone (loop $aPanels
      (br_if $aDone (i32.ge_u (local.get $i) (local.get $M)))
      (local.set $w (select (i32.const ${MR}) (i32.const 1) (i32.le_u (i32.add (local.get $i) (i32.const ${MR})) (local.get $M))))
      (call $pack (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $aRow))) (local.get $K)
        (local.get $aRow) (local.get $aCol) (local.get $w) (local.get $w) (local.get $p))
      (local.set $p (i32.add (local.get $p) (i32.shl (i32.mul (local.get $w) (local.get $K)) (i32.const 2))))
      (local.set $i (i32.add (local.get $i) (local.get $w)))
      (br $aPanels)))
    ;; B's panels one at a time (8 columns while 8 are left, then 4, the last padded), each
    ;; multiplied by all of A while it is in cache.
    (local.set $q (local.get $bp))
    (block $bDone (loop $bPanels
      (br_if $bDone (i32.ge_u (local.get $j) (local.get $N)))
      (local.set $w (select (i32.const 8) (i32.const 4) (i32.le_u (i32.add (local.get $j) (i32.const 8)) (local.get $N))))
      (local.set $valid (select (local.get $w) (i32.sub (local.get $N) (local.get $j))
        (i32.le_u (i32.add (local.get $j) (local.get $w)) (local.get $N))))
      (if (local.get $packB)
        (then
          (call $pack (i32.add (local.get $b) (i32.mul (local.get $j) (local.get $bCol))) (local.get $K)
            (local.get $bCol) (local.get $bRow) (local.get $w) (local.get $valid) (local.get $q))
          (local.set $panel (local.get $q))
          (local.set $qStep (i32.shl (local.get $w) (i32.const 2))))
        (else
          (local.set $panel (i32.add (local.get $b) (i32.shl (local.get $j) (i32.const 2))))
          (local.set $qStep (local.get $bRow))))
      (call $pack (i32.add (local.get $bias) (i32.shl (local.get $j) (i32.const 2))) (i32.const 1) (i32.const 4) (i32.const 0)
        (local.get $w) (select (local.get $valid) (i32.const 0) (local.get $hasBias)) (local.get $biasPanel))
      ${OVER_A_PANELS}
      (local.set $q (i32.add (local.get $q) (i32.shl (i32.mul (local.get $w) (local.get $K)) (i32.const 2))))
      (local.set $j (i32.add (local.get $j) (local.get $w)))
      (br $bPanels))))
)`;

interface Exports {
  gemm(
    a: number,
    aRow: number,
    aCol: number,
    b: number,
    bRow: number,
    bCol: number,
    bias: number,
    hasBias: number,
    c: number,
    M: number,
    N: number,
    K: number,
    ap: number,
    bp: number,
    packB: number,
  ): void;
}

/** The kernels replaced: tf.matMul's, and tf.fused.matMul's (GPT's linear layers, with a bias). */
const KERNEL_NAMES = ['BatchMatMul', '_FusedMatMul'] as const;

/** The kernels this one replaced, while installed. */
let replaced: tf.KernelConfig[] | undefined;

/** The assembled module, kept: wabt takes a while, and a test installs and uninstalls often. */
let binary: Uint8Array | undefined;

/**
 * Replaces the wasm backend's BatchMatMul and _FusedMatMul (call with the backend active, after
 * any other replacement of them); idempotent. Resolves to false where it does not apply: another
 * tfjs-backend-wasm version or its threaded build, or a V8 that will not compile relaxed SIMD.
 */
export async function installGemmKernel(wasmVersion: string): Promise<boolean> {
  if (replaced) return true;
  if (!wasmVersion.startsWith('4.') || tf.getBackend() !== 'wasm') return false;
  const memory = (tf.backend() as unknown as WasmBackend).wasm.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory) || !(memory.buffer instanceof ArrayBuffer)) return false;
  binary ??= await assemble();
  if (!WebAssembly.validate(binary)) {
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    if (!WebAssembly.validate(binary)) return false;
  }
  const module = await WebAssembly.compile(binary);
  const exports = (await WebAssembly.instantiate(module, { env: { memory } })).exports as unknown as Exports;
  const previous = KERNEL_NAMES.map((name) => tf.getKernel(name, 'wasm'));
  if (!previous.every((kernel) => kernel !== undefined)) return false;
  for (const kernel of previous) {
    tf.unregisterKernel(kernel.kernelName, 'wasm');
    tf.registerKernel({
      kernelName: kernel.kernelName,
      backendName: 'wasm',
      kernelFunc: gemmKernel(exports, kernel),
    });
  }
  replaced = previous;
  return true;
}

/** Puts back the kernels it replaced (for tests and benches that compare the two). */
export function uninstallGemmKernel(): void {
  if (!replaced) return;
  for (const kernel of replaced) {
    tf.unregisterKernel(kernel.kernelName, 'wasm');
    tf.registerKernel(kernel);
  }
  replaced = undefined;
}

/** Whether matmuls of at least GEMM_MIN_ROWS rows run on this kernel. */
export function gemmKernelInstalled(): boolean {
  return replaced !== undefined && tf.getBackend() === 'wasm';
}

async function assemble(): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const wat = wabt.parseWat('gemmKernel.wat', GEMM_WAT, { simd: true, relaxed_simd: true });
  try {
    return wat.toBinary({}).buffer;
  } finally {
    wat.destroy();
  }
}

/** The kernel in place of `previous` (BatchMatMul or _FusedMatMul), which keeps what it does not take. */
function gemmKernel(exports: Exports, previous: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const { inputs, attrs } = args as KernelArgs;
    const backend = args.backend as unknown as WasmBackend;
    const { a, b, bias } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo; bias?: tf.TensorInfo };
    const transposeA = attrs?.transposeA === true;
    const transposeB = attrs?.transposeB === true;
    const batch = a.shape.slice(0, -2);
    const [aRows, aCols] = a.shape.slice(-2) as [number, number];
    const [bRows, bCols] = b.shape.slice(-2) as [number, number];
    const [M, K] = transposeA ? [aCols, aRows] : [aRows, aCols];
    const N = transposeB ? bRows : bCols;
    // B is packed for many rows: packing costs little beside 2 M flops per element of B, and a panel
    // read in place is K rows a power of 2 bytes apart for many shapes (N = 512: 2 KiB), which maps
    // them to few cache sets (measured: half the speed). Few rows (decoding) read B where it lies,
    // which needs its rows to be whole vectors of 4 columns.
    const packB = M >= GEMM_MIN_ROWS || transposeB || N % 4 !== 0;
    const entries = batch.reduce((n, s) => n * s, 1);
    // tfjs-backend-wasm 4.22's own _FusedMatMul adds the bias wrongly when it does not hand the
    // matmul to XNNPACK (a transpose flag, or a batch of more than 1), so those stay here at any size.
    const stockIsWrong = bias !== undefined && (transposeA || transposeB || entries > 1);
    // Activations, broadcast batches and biases other than one per column stay with the kernel
    // this one replaced, and so do matmuls too small to pay for packing B.
    if (
      a.dtype !== 'float32' ||
      b.dtype !== 'float32' ||
      !tf.util.arraysEqual(batch, b.shape.slice(0, -2)) ||
      (transposeB ? bCols : bRows) !== K ||
      (M < GEMM_MIN_ROWS && packB && !stockIsWrong) ||
      N === 0 ||
      K === 0 ||
      (attrs?.activation !== undefined && attrs.activation !== 'linear') ||
      inputs.preluActivationWeights !== undefined ||
      (bias !== undefined && (bias.dtype !== 'float32' || tf.util.sizeFromShape(bias.shape) !== N))
    ) {
      return previous.kernelFunc(args);
    }
    const at = (t: tf.TensorInfo): number => backend.dataIdMap.get(t.dataId).memoryOffset;
    const out = backend.makeOutput([...batch, M, N], 'float32');
    const aPacked = backend.makeOutput([M * K], 'float32');
    const bPacked = backend.makeOutput([(packB ? K * Math.ceil(N / 4) * 4 : 0) + 8], 'float32');
    const [aAt, bAt, outAt, biasAt] = [at(a), at(b), at(out), bias ? at(bias) : 0];
    // Byte strides of A's (row, k) and B's (k, column), through the transposes.
    const [aRow, aCol] = transposeA ? [4, aCols * 4] : [aCols * 4, 4];
    const [bRow, bCol] = transposeB ? [4, bCols * 4] : [bCols * 4, 4];
    for (let e = 0; e < entries; e++) {
      exports.gemm(
        aAt + e * aRows * aCols * 4,
        aRow,
        aCol,
        bAt + e * bRows * bCols * 4,
        bRow,
        bCol,
        biasAt,
        bias ? 1 : 0,
        outAt + e * M * N * 4,
        M,
        N,
        K,
        at(aPacked),
        at(bPacked),
        packB ? 1 : 0,
      );
    }
    backend.disposeData(aPacked.dataId);
    backend.disposeData(bPacked.dataId);
    return out;
  };
}
