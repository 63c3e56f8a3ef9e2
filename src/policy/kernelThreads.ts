/**
 * Helper threads for rxrl's wasm kernels (gemmKernel.ts, simdKernels.ts): a kernel call big enough is
 * cut in parts (a product along the rows of C or its columns, causal attention along its sequences,
 * LayerNorm along rows, column sums along columns, GELU, its gradient and AdamW along elements), the
 * calling thread computes the first part and each helper one other, all in place in tfjs's heap.
 *
 * Why helpers, not tfjs's own threads: tfjs-backend-wasm disables its threaded build under Node. Its
 * single-threaded build runs here on a shared heap instead (sharedHeap.ts), so the helpers run the same
 * kernel module on that very memory: the caller writes a helper's call (an export and its arguments)
 * into the helper's control block, wakes it through Atomics, computes its own part, and waits. Nothing
 * is copied; each part writes only its own rows (or columns) of the output and its own scratch, which
 * the caller allocates beforehand (so the heap never grows while a helper runs).
 *
 * Every element of an output is the same sum, in the same order, as on one thread: a product is cut
 * along whole rows or whole panels of 8 columns, with the same blocks of K; the others along whole
 * sequences, rows, columns or vectors of elements. So results do not depend on the thread count
 * (tested bit for bit).
 *
 * The helpers sleep in Atomics.wait between calls: idle, they take no CPU from other workers. They
 * are unref'd, so they never keep a process alive. A helper that fails (a trap, a module that does
 * not link, a worker that ends) makes the call throw with its thread and error, once the other parts
 * are done, and every later call too, until setMatmulThreads starts new helpers.
 */
import { Worker } from 'node:worker_threads';
import type { SharedMemory } from './sharedHeap.ts';

/** A kernel module for the helpers (compiled to import the shared heap), and the exports they may run. */
export interface HelperModule {
  module: object;
  exports: readonly string[];
}

/** One part of a kernel call, for a helper: the export (of any of its modules) and its arguments (numbers: addresses, sizes, scales). */
export interface HelperCall {
  fn: string;
  args: number[];
}

/**
 * The helper threads the kernels split their work with now (none: one thread; gemmKernel.ts's
 * setMatmulThreads starts them), read by every kernel at each call; and the kernel modules, by name,
 * that new helpers are started with (each kernel module registers its own where the heap is shared).
 */
export const helperPool: { helpers: KernelHelpers | undefined; modules: Map<string, HelperModule> } = {
  helpers: undefined,
  modules: new Map(),
};

/**
 * A helper did not finish its part in time: it may still be writing into the heap, so the kernel that
 * called it must not free its outputs or scratch (they stay allocated: the bytes are never reused).
 */
export class HelperStuckError extends Error {}

const STATE = { idle: 0, work: 1, done: 2, failed: 3, stop: 4 } as const;
/** ctl layout: Int32 [state, export index, argument count, message length], then MAX_ARGS float64 arguments, then the message. */
const FN = 1;
const ARGC = 2;
const MESSAGE_LENGTH = 3;
const ARGS_BYTE = 16;
const MAX_ARGS = 24;
const MESSAGE_BYTE = ARGS_BYTE + MAX_ARGS * 8;
const CTL_BYTES = MESSAGE_BYTE + 1024;
/** How long the caller waits for a helper before it reports it stuck (by default). */
const HELPER_TIMEOUT_MS = 120_000;

const HELPER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { modules, memory, ctl } = workerData;
const STATE = ${JSON.stringify(STATE)};
const state = new Int32Array(ctl, 0, 4);
const args = new Float64Array(ctl, ${ARGS_BYTE}, ${MAX_ARGS});
const bytes = new Uint8Array(ctl);
function fail(error) {
  const text = new TextEncoder().encode(String(error)).subarray(0, ${CTL_BYTES - MESSAGE_BYTE});
  bytes.set(text, ${MESSAGE_BYTE});
  Atomics.store(state, ${MESSAGE_LENGTH}, text.length);
  Atomics.store(state, 0, STATE.failed);
  Atomics.notify(state, 0);
}
let fns;
let startError;
try {
  fns = modules.flatMap(({ module, exports: names }) => {
    const exports = new WebAssembly.Instance(module, { env: { memory } }).exports;
    return names.map((name) => exports[name] ?? (() => { throw new Error('the kernel module has no export ' + name); }));
  });
} catch (error) {
  startError = error;
  fail(error);
}
for (;;) {
  let now;
  while ((now = Atomics.load(state, 0)) !== STATE.work && now !== STATE.stop) Atomics.wait(state, 0, now);
  if (now === STATE.stop) break;
  // A helper that could not start answers every part with why.
  if (fns === undefined) {
    fail(startError);
    continue;
  }
  try {
    fns[state[${FN}]](...args.subarray(0, state[${ARGC}]));
    Atomics.store(state, 0, STATE.done);
    Atomics.notify(state, 0);
  } catch (error) {
    fail(error);
  }
}
`;

interface Helper {
  worker: Worker;
  state: Int32Array;
  args: Float64Array;
  /** Why its worker ended (a crash, say), if it did. */
  ended?: string;
}

export class KernelHelpers {
  private readonly helpers: Helper[];
  /** Each export's index among all the modules' exports (the helpers' table of functions). */
  private readonly index = new Map<string, number>();
  private callsShared = 0;
  /** Set when a helper did not finish in time: the helpers are not used again. */
  private stuck: string | undefined;

  /**
   * Starts `count` (at least 1) helper threads, each with an instance of every module of `modules` (the
   * kernel modules, built to import a shared memory) on `memory`: the shared heap the calling thread's
   * kernels run on. An export name may appear in one module only.
   */
  constructor(
    modules: readonly HelperModule[],
    memory: SharedMemory,
    count: number,
    private readonly timeoutMs = HELPER_TIMEOUT_MS,
  ) {
    for (const name of modules.flatMap((m) => m.exports)) {
      if (this.index.has(name)) throw new Error(`kernel helpers: two modules export ${name}`);
      this.index.set(name, this.index.size);
    }
    this.helpers = [];
    try {
      for (let h = 0; h < count; h++) this.helpers.push(this.start(modules, memory));
    } catch (error) {
      void this.close();
      throw error;
    }
  }

  private start(modules: readonly HelperModule[], memory: SharedMemory): Helper {
    {
      const ctl = new SharedArrayBuffer(CTL_BYTES);
      const worker = new Worker(HELPER_SOURCE, {
        eval: true,
        workerData: { modules, memory, ctl },
      });
      worker.unref();
      const helper: Helper = {
        worker,
        state: new Int32Array(ctl, 0, 4),
        args: new Float64Array(ctl, ARGS_BYTE, MAX_ARGS),
      };
      // The caller, blocked in Atomics.wait, sees these only after its call: the next one says so.
      worker.on('error', (error) => (helper.ended ??= `its worker failed: ${String(error)}`));
      worker.on('exit', (code) => (helper.ended ??= `its worker exited (code ${code})`));
      return helper;
    }
  }

  /** Whether a helper failed, ended, or did not finish in time: then every call throws, and setMatmulThreads starts new helpers. */
  get broken(): boolean {
    return (
      this.stuck !== undefined ||
      this.helpers.some(({ state, ended }) => ended !== undefined || Atomics.load(state, 0) === STATE.failed)
    );
  }

  /** Helper threads (the caller's thread is one more). */
  get count(): number {
    return this.helpers.length;
  }

  /** Kernel calls cut between the threads so far (for tests: that the threads did take part). */
  get shared(): number {
    return this.callsShared;
  }

  /** Whether the helpers can run `fn` (a module registered after they started is not theirs). */
  has(fn: string): boolean {
    return this.index.has(fn);
  }

  /**
   * Runs calls[h] on helper h (at most one call per helper) while `own` runs on this thread, and
   * returns when all are done. Throws the first error: a helper's (naming its thread), or own's; every
   * helper woken is waited for first, so none is still writing when this returns or throws.
   */
  run(calls: HelperCall[], own: () => void): void {
    if (calls.length > this.helpers.length)
      throw new Error(
        `a kernel cut in ${calls.length + 1} parts, for ${this.helpers.length + 1} threads (a bug in the kernel's cut)`,
      );
    if (this.stuck)
      throw new Error(`${this.stuck}; setMatmulThreads (or setBackendThreads) starts new helpers`);
    for (const { fn, args } of calls) {
      if (!this.index.has(fn))
        throw new Error(
          `the kernel helpers were started without a module exporting ${fn}; setMatmulThreads starts new ones`,
        );
      if (args.length > MAX_ARGS) throw new Error(`${fn}: ${args.length} arguments, at most ${MAX_ARGS}`);
    }
    this.helpers.forEach((_, h) => this.checkAlive(h));
    const errors: unknown[] = [];
    const woken: number[] = [];
    for (const [h, { fn, args }] of calls.entries()) {
      const { state, args: slots } = this.helpers[h]!;
      state[FN] = this.index.get(fn)!;
      state[ARGC] = args.length;
      slots.set(args);
      // From idle only: a helper that failed since checkAlive keeps its answer.
      if (Atomics.compareExchange(state, 0, STATE.idle, STATE.work) !== STATE.idle) {
        try {
          this.checkAlive(h);
          errors.push(new Error(`kernel helper thread ${h + 1} was not idle when a call began`));
        } catch (error) {
          errors.push(error);
        }
        break;
      }
      Atomics.notify(state, 0);
      woken.push(h);
    }
    if (errors.length === 0) {
      try {
        own();
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
    this.callsShared++;
  }

  /** Stops the helper threads. */
  async close(): Promise<void> {
    for (const { state } of this.helpers) {
      Atomics.store(state, 0, STATE.stop);
      Atomics.notify(state, 0);
    }
    await Promise.all(this.helpers.map(({ worker }) => worker.terminate()));
  }

  /** Waits for helper h to finish its part; throws what it threw. */
  private await(h: number): void {
    const { state } = this.helpers[h]!;
    const deadline = performance.now() + this.timeoutMs;
    while (Atomics.load(state, 0) === STATE.work) {
      if (performance.now() > deadline) {
        // It may still write into the heap: no later call may use it, nor may the caller free what it writes.
        this.stuck = `kernel helper thread ${h + 1} did not finish its part within ${this.timeoutMs / 1000} s (stuck, or its thread ended)`;
        throw new HelperStuckError(this.stuck);
      }
      Atomics.wait(state, 0, STATE.work, Math.min(1000, this.timeoutMs));
    }
    this.checkAlive(h);
    Atomics.store(state, 0, STATE.idle);
  }

  /** Throws what helper h failed with, if it failed (at start, or on an earlier part: it stays failed) or its worker ended. */
  private checkAlive(h: number): void {
    const { state, ended } = this.helpers[h]!;
    if (ended !== undefined) throw new Error(`kernel helper thread ${h + 1} ended: ${ended}`);
    if (Atomics.load(state, 0) !== STATE.failed) return;
    const length = Atomics.load(state, MESSAGE_LENGTH);
    const message = new TextDecoder().decode(
      new Uint8Array(state.buffer).slice(MESSAGE_BYTE, MESSAGE_BYTE + length),
    );
    throw new Error(`kernel helper thread ${h + 1} failed: ${message}`);
  }
}

/**
 * Where [0, extent) is cut for `parts` threads: parts + 1 bounds, inner ones multiples of `unit`;
 * undefined when some part would be empty (too little to cut).
 */
export function cuts(extent: number, parts: number, unit: number): number[] | undefined {
  const bounds = Array.from({ length: parts + 1 }, (_, i) =>
    i === parts ? extent : Math.round((extent * i) / parts / unit) * unit,
  );
  return bounds.some((bound, i) => i > 0 && bound <= bounds[i - 1]!) ? undefined : bounds;
}

/** An element-wise kernel (or one of about as much work per element) is cut between threads from this many elements on (~0.3 ms of GELU on one). */
const THREADED_ELEMENTS = 1 << 17;

/** The helper threads to cut a kernel call of `work` (elements, or what `threshold` counts) with: none when it is smaller than `threshold`. */
export function helpersFor(work: number, threshold = THREADED_ELEMENTS): KernelHelpers | undefined {
  return work >= threshold ? helperPool.helpers : undefined;
}

/**
 * Runs the export `fn` of `exports` (a kernel module's instance on this thread) cut along [0, extent)
 * in parts of whole `unit`s: args(start, end) gives each part's arguments; the first part runs here,
 * the others on the helpers at once. With no `helpers`, helpers without `fn`, or too little to cut,
 * one call for all of it runs here. Returns whether it was cut.
 */
export function runCut(
  helpers: KernelHelpers | undefined,
  exports: object,
  fn: string,
  extent: number,
  unit: number,
  args: (start: number, end: number) => number[],
): boolean {
  const here = (exports as Record<string, (...args: number[]) => unknown>)[fn]!;
  const bounds = helpers?.has(fn) ? cuts(extent, helpers.count + 1, unit) : undefined;
  if (bounds === undefined) {
    here(...args(0, extent));
    return false;
  }
  const calls = bounds.slice(0, -1).map((start, i) => args(start, bounds[i + 1]!));
  helpers!.run(
    calls.slice(1).map((a) => ({ fn, args: a })),
    () => here(...calls[0]!),
  );
  return true;
}

/**
 * Frees `tensors` with `free` after a kernel call failed (simdKernels.ts's wasmKernel frees what the
 * call made), unless a helper may still be writing into them (HelperStuckError): then they stay
 * allocated, so that no later tensor gets those bytes.
 */
export function freeUnlessStuck<T>(error: unknown, tensors: readonly T[], free: (t: T) => void): void {
  if (!(error instanceof HelperStuckError)) for (const t of tensors) free(t);
}
