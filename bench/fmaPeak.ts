/**
 * The ceiling rxrl's wasm kernels work under: how many vector FMAs (WebAssembly's 128-bit
 * `f32x4.relaxed_madd`, what the matmul's micro-kernel is made of) this machine runs a second, on
 * one thread and on several threads at once. A loop of 12 independent FMA chains (enough to cover
 * the instruction's latency) with no loads: nothing a kernel does can run FMAs faster.
 *
 * Why it matters: a 2-vCPU virtual machine may give its two vCPUs the two hardware threads of one
 * physical core, which then share that core's vector units. Two threads then run this loop at half
 * the speed of one, and no cutting of the work between threads gets more FMAs out of the core. The
 * bench reports the learner step's FLOP rate against this ceiling, so a ratio to PyTorch that will
 * not come down is seen for what it is (PyTorch's AVX-512 kernels do 4x the work per instruction).
 */
import v8 from 'node:v8';
import { Worker } from 'node:worker_threads';
import wabtInit from 'wabt';

/** The WebAssembly JS API, a Node global that the ES library this project compiles against does not type. */
declare const WebAssembly: { validate(bytes: Uint8Array): boolean };

const CHAINS = 12;
/** FLOPs of one pass of the loop: 12 FMAs of 4 lanes, 2 FLOPs each. */
const FLOPS_PER_PASS = CHAINS * 4 * 2;
/** Passes per timed block: ~0.1 s at 40 GFLOP/s. */
const PASSES = 40_000_000;

async function fmaLoop(): Promise<Uint8Array> {
  const accs = Array.from({ length: CHAINS }, (_, i) => `$a${i}`);
  // The result sums every chain, so the compiler cannot drop any of them.
  const sum = accs.slice(1).reduce((e, a) => `(f32x4.add ${e} (local.get ${a}))`, '(local.get $a0)');
  const wat = `(module
  (func (export "fma") (param $n i32) (result f32)
    ${accs.map((a) => `(local ${a} v128)`).join(' ')} (local $x v128) (local $y v128)
    (local.set $x (f32x4.splat (f32.const 1.0000001)))
    (local.set $y (f32x4.splat (f32.const 0.9999999)))
    (loop $l
      ${accs.map((a) => `(local.set ${a} (f32x4.relaxed_madd (local.get $x) (local.get ${a}) (local.get $y)))`).join('\n      ')}
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (local.get $n)))
    (f32x4.extract_lane 0 ${sum})))`;
  const wabt = await wabtInit();
  const parsed = wabt.parseWat('fma.wat', wat, { simd: true, relaxed_simd: true });
  try {
    return parsed.toBinary({}).buffer;
  } finally {
    parsed.destroy();
  }
}

// Each worker compiles the loop, warms it up, counts itself in (ctl[1]), waits for the start (ctl[0])
// and times one block of passes.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { bytes, ctl } = workerData;
const flags = new Int32Array(ctl);
const fma = new WebAssembly.Instance(new WebAssembly.Module(bytes)).exports.fma;
fma(100000);
Atomics.add(flags, 1, 1);
Atomics.wait(flags, 0, 0);
const t = performance.now();
fma(${PASSES});
parentPort.postMessage(performance.now() - t);
`;

/** One block of passes on each of `threads` workers started together: each one's wall time in ms. */
async function together(bytes: Uint8Array, threads: number): Promise<number[]> {
  const ctl = new SharedArrayBuffer(8);
  const flags = new Int32Array(ctl);
  const workers = Array.from(
    { length: threads },
    () => new Worker(WORKER, { eval: true, workerData: { bytes, ctl } }),
  );
  const results = workers.map(
    (w) =>
      new Promise<number>((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
      }),
  );
  while (Atomics.load(flags, 1) < threads) await new Promise((r) => setTimeout(r, 1));
  Atomics.store(flags, 0, 1);
  Atomics.notify(flags, 0);
  const ms = await Promise.all(results);
  await Promise.all(workers.map((w) => w.terminate()));
  return ms;
}

export interface FmaPeak {
  /** GFLOP/s of one thread alone (its best block). */
  alone: number;
  /** GFLOP/s of `threads` threads together, all of them (the best round). */
  together: number;
  threads: number;
}

/**
 * Measures the vector FMA ceiling: one thread alone, then `threads` at once (rounds alternate, and
 * the best of each counts: slowdowns come from elsewhere, never the reverse). Null where relaxed
 * SIMD does not compile.
 */
export async function fmaPeak(threads: number, rounds = 6): Promise<FmaPeak | null> {
  const bytes = await fmaLoop();
  if (!WebAssembly.validate(bytes)) {
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    if (!WebAssembly.validate(bytes)) return null;
  }
  const gflops = (ms: number, n: number): number => (n * PASSES * FLOPS_PER_PASS) / ms / 1e6;
  let alone = 0;
  let all = 0;
  for (let r = 0; r < rounds; r++) {
    const [one] = await together(bytes, 1);
    alone = Math.max(alone, gflops(one!, 1));
    if (threads > 1) {
      all = Math.max(all, gflops(Math.max(...(await together(bytes, threads))), threads));
    }
  }
  return { alone, together: threads > 1 ? all : alone, threads };
}

export const describeFmaPeak = (p: FmaPeak): string =>
  `vector FMA ceiling (wasm f32x4, no loads): ${p.alone.toFixed(1)} GFLOP/s on one thread` +
  (p.threads > 1
    ? `, ${p.together.toFixed(1)} on ${p.threads} threads together (${(p.together / p.alone).toFixed(2)}x one)`
    : '');
