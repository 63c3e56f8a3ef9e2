/**
 * Helper threads for the wasm backend's matmul (gemmKernel.ts): a product big enough is cut in parts
 * along the rows of C (or its columns, whichever copies less), the calling thread computes the first
 * part where it lies and each helper one other part.
 *
 * Why helpers, not tfjs's own threads: tfjs-backend-wasm disables its threaded build under Node, and
 * its memory is not shared, so no other thread can read it. The helpers run the same kernel module
 * on a shared WebAssembly.Memory of their own: the caller copies in each helper's operands (its rows
 * of A and all of B, or all of A and its columns of B), wakes it through Atomics, computes its own
 * part, waits, and copies the helper's part of C back. The copies cost a few per cent of a large
 * product's time (they are memcpy-speed, the product is 2 K flops per element of C).
 *
 * Every element of C is the same sum, in the same order, as on one thread: the split follows whole
 * rows or whole panels of 8 columns, and the blocks of K do not change. So results do not depend on
 * the thread count (tested bit for bit).
 *
 * The helpers sleep in Atomics.wait between products: idle, they take no CPU from other workers.
 * They are unref'd, so they never keep a process alive. A helper that fails (a trap, a module that
 * does not link, a worker that ends) makes the product throw with its thread and error, once the
 * other parts are done, and every later product too, until setMatmulThreads starts new helpers.
 */
import { Worker } from 'node:worker_threads';

/** The WebAssembly JS API, a Node global that the ES library this project compiles against does not type. */
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => {
    buffer: SharedArrayBuffer;
    grow(pages: number): number;
  };
};

/** The kernel module's matmul export as the helpers call it (byte addresses and strides). */
export type GemmCall = (
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

/** C [M, N] = A B (+ bias), with A's element (i, k) at a + i*aRow + k*aCol and B's (k, n) at b + k*bRow + n*bCol (bytes). */
export interface Product {
  a: number;
  aRow: number;
  aCol: number;
  b: number;
  bRow: number;
  bCol: number;
  /** Byte address of N floats, or undefined. */
  bias: number | undefined;
  /** C's rows are N floats apart. */
  c: number;
  M: number;
  N: number;
  K: number;
}

/** The caller's own part: rows [0, rows) and columns [0, cols) of C, computed in its own memory. */
export type OwnPart = (rows: number, cols: number) => void;

const STATE = { idle: 0, work: 1, done: 2, failed: 3, stop: 4 } as const;
/** ctl layout (Int32): [state, the 17 arguments of gemm, message length, message bytes...]. */
const ARGS = 1;
const MESSAGE_LENGTH = 18;
const MESSAGE = 19 * 4;
const CTL_BYTES = 19 * 4 + 1024;
/** How long the caller waits for a helper before it reports it stuck. */
const HELPER_TIMEOUT_MS = 120_000;
/** The blocks of the split: rows in multiples of the micro-kernel's 6, columns in panels of 8. */
const ROW_UNIT = 6;
const COLUMN_UNIT = 8;
const PAGE = 65536;

const HELPER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { module, memory, ctl } = workerData;
const STATE = ${JSON.stringify(STATE)};
const bytes = new Uint8Array(ctl.buffer);
function fail(error) {
  const text = new TextEncoder().encode(String(error)).subarray(0, ${CTL_BYTES - MESSAGE});
  bytes.set(text, ${MESSAGE});
  Atomics.store(ctl, ${MESSAGE_LENGTH}, text.length);
  Atomics.store(ctl, 0, STATE.failed);
  Atomics.notify(ctl, 0);
}
let gemm;
let startError;
try {
  gemm = new WebAssembly.Instance(module, { env: { memory } }).exports.gemm;
} catch (error) {
  startError = error;
  fail(error);
}
for (;;) {
  let state;
  while ((state = Atomics.load(ctl, 0)) !== STATE.work && state !== STATE.stop) Atomics.wait(ctl, 0, state);
  if (state === STATE.stop) break;
  // A helper that could not start answers every part with why.
  if (gemm === undefined) {
    fail(startError);
    continue;
  }
  try {
    gemm(...ctl.subarray(${ARGS}, ${ARGS + 17}));
    Atomics.store(ctl, 0, STATE.done);
    Atomics.notify(ctl, 0);
  } catch (error) {
    fail(error);
  }
}
`;

interface Helper {
  worker: Worker;
  ctl: Int32Array;
  /** Why its worker ended (a crash, say), if it did. */
  ended?: string;
}

/** One part of a split product, for a helper: its rows [r0, r1) and columns [c0, c1) of C. */
interface Part {
  r0: number;
  r1: number;
  c0: number;
  c1: number;
}

export class MatmulHelpers {
  // At most 1 GiB: a product whose copies would not fit is computed by the caller alone.
  private readonly memory = new WebAssembly.Memory({ initial: 16, maximum: 16384, shared: true });
  private readonly helpers: Helper[];
  private productsShared = 0;
  /** Set when a helper did not finish in time: the helpers are not used again. */
  private stuck: string | undefined;

  /**
   * Starts `count` (at least 1) helper threads running `module` (gemmKernel.ts's kernels built for a shared
   * memory: its export `gemm` has the GemmCall signature); `blocks`: the kernel's blocks of rows and
   * of K (GEMM_BLOCKS), which size its scratch.
   */
  constructor(
    module: object,
    count: number,
    private readonly blocks: { rows: number; k: number },
  ) {
    this.helpers = Array.from({ length: count }, () => {
      const ctl = new Int32Array(new SharedArrayBuffer(CTL_BYTES));
      const worker = new Worker(HELPER_SOURCE, {
        eval: true,
        workerData: { module, memory: this.memory, ctl },
      });
      worker.unref();
      const helper: Helper = { worker, ctl };
      // The caller, blocked in Atomics.wait, sees these only after its product: the next one says so.
      worker.on('error', (error) => (helper.ended ??= `its worker failed: ${String(error)}`));
      worker.on('exit', (code) => (helper.ended ??= `its worker exited (code ${code})`));
      return helper;
    });
  }

  /** Whether a helper failed, ended, or did not finish in time: then every product throws, and setMatmulThreads starts new helpers. */
  get broken(): boolean {
    return (
      this.stuck !== undefined ||
      this.helpers.some(({ ctl, ended }) => ended !== undefined || Atomics.load(ctl, 0) === STATE.failed)
    );
  }

  /** Helper threads (the caller's thread is one more). */
  get count(): number {
    return this.helpers.length;
  }

  /** Products split so far (for tests: that the threads did take part). */
  get shared(): number {
    return this.productsShared;
  }

  /**
   * C = A B on the caller's thread (`own`, for its part, in its memory `heap`) and the helpers.
   * Returns false, having done nothing, when the product is too small to cut in parts or its copies
   * would not fit in the shared memory. Throws when a helper is broken (see `broken`).
   */
  multiply(heap: ArrayBuffer, p: Product, own: OwnPart): boolean {
    const byRows = p.M >= p.N;
    const [extent, unit] = byRows ? [p.M, ROW_UNIT] : [p.N, COLUMN_UNIT];
    const parts = this.helpers.length + 1;
    const cuts = Array.from({ length: parts + 1 }, (_, i) =>
      i === parts ? extent : Math.round((extent * i) / parts / unit) * unit,
    );
    if (cuts.some((cut, i) => i > 0 && cut <= cuts[i - 1]!)) return false;
    const helperParts: Part[] = cuts.slice(1, -1).map((start, i) => {
      const end = cuts[i + 2]!;
      return byRows ? { r0: start, r1: end, c0: 0, c1: p.N } : { r0: 0, r1: p.M, c0: start, c1: end };
    });
    if (this.stuck) throw new Error(`${this.stuck}; set the threads again to start new helpers`);
    this.helpers.forEach((_, h) => this.checkAlive(h));
    const plans = this.place(p, helperParts, byRows);
    if (plans === undefined) return false;
    const src = new Float32Array(heap);
    const dst = new Float32Array(this.memory.buffer);
    if (byRows) copyMatrix(src, p.b, p.bRow, p.bCol, p.K, p.N, dst, plans[0]!.b);
    else copyMatrix(src, p.a, p.aRow, p.aCol, p.M, p.K, dst, plans[0]!.a);
    // Every helper woken is waited for, whatever fails: none may still be writing when the next
    // product reuses the shared memory.
    const errors: unknown[] = [];
    const woken: number[] = [];
    for (const [h, plan] of plans.entries()) {
      const part = helperParts[h]!;
      const rows = part.r1 - part.r0;
      const cols = part.c1 - part.c0;
      if (byRows) copyMatrix(src, p.a + part.r0 * p.aRow, p.aRow, p.aCol, rows, p.K, dst, plan.a);
      else copyMatrix(src, p.b + part.c0 * p.bCol, p.bRow, p.bCol, p.K, cols, dst, plan.b);
      if (p.bias !== undefined)
        dst.set(src.subarray((p.bias >> 2) + part.c0, (p.bias >> 2) + part.c1), plan.bias >> 2);
      const ctl = this.helpers[h]!.ctl;
      const [aRow, aCol] = packedStrides(p.aCol, rows, p.K);
      const [bRow, bCol] = packedStrides(p.bCol, p.K, cols);
      ctl.set(
        [
          plan.a,
          aRow,
          aCol,
          plan.b,
          bRow,
          bCol,
          plan.bias,
          p.bias === undefined ? 0 : 1,
          plan.c,
          cols * 4,
          rows,
          cols,
          p.K,
          plan.ap,
          plan.bp,
          1,
          plan.cp,
        ],
        ARGS,
      );
      // From idle only: a helper that failed since checkAlive keeps its answer.
      if (Atomics.compareExchange(ctl, 0, STATE.idle, STATE.work) !== STATE.idle) {
        try {
          this.checkAlive(h);
          errors.push(new Error(`matmul helper thread ${h + 1} was not idle when a product began`));
        } catch (error) {
          errors.push(error);
        }
        break;
      }
      Atomics.notify(ctl, 0);
      woken.push(h);
    }
    if (errors.length === 0) {
      try {
        own(byRows ? cuts[1]! : p.M, byRows ? p.N : cuts[1]!);
      } catch (error) {
        errors.push(error);
      }
    }
    for (const h of woken) {
      try {
        this.await(h);
      } catch (error) {
        errors.push(error);
      }
    }
    if (errors.length > 0) throw errors[0];
    const out = new Float32Array(heap);
    plans.forEach((plan, h) => {
      const part = helperParts[h]!;
      const cols = part.c1 - part.c0;
      const from = new Float32Array(this.memory.buffer);
      if (cols === p.N) {
        out.set(from.subarray(plan.c / 4, plan.c / 4 + (part.r1 - part.r0) * cols), p.c / 4 + part.r0 * p.N);
        return;
      }
      for (let r = part.r0; r < part.r1; r++) {
        const at = plan.c / 4 + (r - part.r0) * cols;
        out.set(from.subarray(at, at + cols), p.c / 4 + r * p.N + part.c0);
      }
    });
    this.productsShared++;
    return true;
  }

  /** Stops the helper threads. */
  async close(): Promise<void> {
    for (const { ctl } of this.helpers) {
      Atomics.store(ctl, 0, STATE.stop);
      Atomics.notify(ctl, 0);
    }
    await Promise.all(this.helpers.map(({ worker }) => worker.terminate()));
  }

  /** Where each helper's operands, C and scratch lie in the shared memory; grows it to fit (undefined if it cannot). */
  private place(p: Product, parts: Part[], byRows: boolean): Plan[] | undefined {
    let end = 0;
    const take = (floats: number): number => {
      const at = end;
      end += Math.ceil(floats / 4) * 16;
      return at;
    };
    // The operand every helper reads whole (B for rows, A for columns) is copied once.
    const whole = take(byRows ? p.K * p.N : p.M * p.K);
    const plans = parts.map((part) => {
      const rows = part.r1 - part.r0;
      const cols = part.c1 - part.c0;
      return {
        a: byRows ? take(rows * p.K) : whole,
        b: byRows ? whole : take(p.K * cols),
        bias: take(cols),
        c: take(rows * cols),
        // The kernel's scratch: packed A (at most a block of rows by a block of K) and packed B (a
        // block of K by all of the part's columns, + 8 floats: the current panel's bias).
        ap: take(Math.min(rows, this.blocks.rows) * Math.min(p.K, this.blocks.k)),
        bp: take(Math.min(p.K, this.blocks.k) * Math.ceil(cols / 4) * 4 + 8),
        cp: p.K > this.blocks.k ? take(sumsScratch(rows, cols)) : 0,
      };
    });
    const missing = end - this.memory.buffer.byteLength;
    if (missing > 0) {
      try {
        this.memory.grow(Math.ceil(missing / PAGE));
      } catch {
        return undefined;
      }
    }
    return plans;
  }

  /** Waits for helper h to finish its part; throws what it threw. */
  private await(h: number): void {
    const ctl = this.helpers[h]!.ctl;
    const deadline = performance.now() + HELPER_TIMEOUT_MS;
    while (Atomics.load(ctl, 0) === STATE.work) {
      if (performance.now() > deadline) {
        // It may still write into the shared memory: no later product may use it.
        this.stuck = `matmul helper thread ${h + 1} did not finish its part within ${HELPER_TIMEOUT_MS / 1000} s`;
        throw new Error(
          `matmul helper thread ${h + 1} did not finish its part within ${HELPER_TIMEOUT_MS / 1000} s`,
        );
      }
      Atomics.wait(ctl, 0, STATE.work, 1000);
    }
    this.checkAlive(h);
    Atomics.store(ctl, 0, STATE.idle);
  }

  /** Throws what helper h failed with, if it failed (at start, or on an earlier part: it stays failed) or its worker ended. */
  private checkAlive(h: number): void {
    const { ctl, ended } = this.helpers[h]!;
    if (ended !== undefined) throw new Error(`matmul helper thread ${h + 1} ended: ${ended}`);
    if (Atomics.load(ctl, 0) !== STATE.failed) return;
    const length = Atomics.load(ctl, MESSAGE_LENGTH);
    const message = new TextDecoder().decode(new Uint8Array(ctl.buffer).slice(MESSAGE, MESSAGE + length));
    throw new Error(`matmul helper thread ${h + 1} failed: ${message}`);
  }
}

interface Plan {
  a: number;
  b: number;
  bias: number;
  c: number;
  ap: number;
  bp: number;
  cp: number;
}

/**
 * Floats of scratch for the sums of an M x N product between blocks of K (gemmKernel.ts's `cp`):
 * C in panels of its columns, each panel's rows side by side.
 */
export function sumsScratch(M: number, N: number): number {
  return M * Math.ceil(N / 4) * 4;
}

/**
 * Copies the [rows, cols] matrix whose element (r, c) is at byte `from + r*rowStride + c*colStride`
 * into `to` (bytes) as it lies: row-major if its columns were adjacent (colStride 4), else
 * column-major. packedStrides gives the copy's strides.
 */
function copyMatrix(
  src: Float32Array,
  from: number,
  rowStride: number,
  colStride: number,
  rows: number,
  cols: number,
  dst: Float32Array,
  to: number,
): void {
  const [lines, length, lineStride] = colStride === 4 ? [rows, cols, rowStride] : [cols, rows, colStride];
  const at = from >> 2;
  const out = to >> 2;
  if (lineStride === length * 4) {
    dst.set(src.subarray(at, at + lines * length), out);
    return;
  }
  for (let l = 0; l < lines; l++) {
    const start = at + l * (lineStride >> 2);
    dst.set(src.subarray(start, start + length), out + l * length);
  }
}

/** The (row, column) byte strides of copyMatrix's copy of a [rows, cols] matrix whose columns were colStride bytes apart. */
function packedStrides(colStride: number, rows: number, cols: number): [number, number] {
  return colStride === 4 ? [cols * 4, 4] : [4, rows * 4];
}
