/**
 * What the benches share: the learner's bench batch (the rows bench/torch/policy_bench.py builds too)
 * and timing that keeps wall and CPU time of each run.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import type { BatchSample, GradientBatch } from '../schemas/index.ts';
import { makeGradientBatch } from '../src/operators/toGradientBatches.ts';

export interface BenchBatchShape {
  rows: number;
  /** Tokens per row, prompt included. */
  length: number;
  promptLength: number;
  vocab: number;
}

/** The shape bench/policy and bench/kernels train on: 16 rows of 128 tokens, 16 of them prompt. */
export const BENCH_BATCH: Omit<BenchBatchShape, 'vocab'> = { rows: 16, length: 128, promptLength: 16 };

/**
 * `rows` rows of `length` tokens, token t of row b = ((b * length + t) * 31) % vocab; behaviour log-probs
 * -log(vocab) (a fresh model's, near uniform), advantages +1 / -1 alternately; finish reason 'length'.
 */
export function learnerBatch({ rows, length, promptLength, vocab }: BenchBatchShape): GradientBatch {
  const samples: BatchSample[] = Array.from({ length: rows }, (_, b) => {
    const ids = Array.from({ length }, (_, t) => ((b * length + t) * 31) % vocab);
    const completion = ids.slice(promptLength);
    return {
      rolloutId: `bench/${b}`,
      groupId: 'bench',
      promptTokenIds: ids.slice(0, promptLength),
      completionTokenIds: completion,
      behaviourLogProbs: completion.map(() => -Math.log(vocab)),
      advantage: b % 2 === 0 ? 1 : -1,
      policyVersion: 0,
      finishReason: 'length',
    };
  });
  return makeGradientBatch(samples);
}

export interface Timing {
  /** Wall times of the runs in ms, fastest first once sorted. */
  wall: number[];
  /** CPU time (user + system) of this process in each run, least first once sorted. */
  cpu: number[];
}

export const ascending = (a: number, b: number): number => a - b;

export const median = (sorted: readonly number[]): number => sorted[Math.floor(sorted.length / 2)]!;

/** Sorts both lists of `t` ascending, in place, and returns it. */
export function sortTiming(t: Timing): Timing {
  t.wall.sort(ascending);
  t.cpu.sort(ascending);
  return t;
}

/** Times `n` calls of `f` after one warm-up call of `warmUp` (default `f`); sorted. */
export async function time(
  n: number,
  f: () => Promise<unknown> | unknown,
  warmUp: () => Promise<unknown> | unknown = f,
): Promise<Timing> {
  await warmUp();
  const t: Timing = { wall: [], cpu: [] };
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    const startCpu = process.cpuUsage();
    await f();
    const used = process.cpuUsage(startCpu);
    t.wall.push(performance.now() - start);
    t.cpu.push((used.user + used.system) / 1000);
  }
  return sortTiming(t);
}

export interface Steadiness {
  /** Share of the wall time in which a fixed loop ran at its best speed: 1 on a steady machine. */
  delivered: number;
  /** The longest single pass of the loop, in ms (its best pass takes about 1.5 ms). */
  worstMs: number;
}

/**
 * How steadily this machine runs a CPU-bound loop right now: a fixed pure-JS loop is timed pass by
 * pass for `ms`; delivered = (best pass x passes) / wall time. Virtual machines that the host
 * pauses show it well below 1 (on this project's 2-core machines it has read 0.15 to 0.4, with
 * single pauses of up to 600 ms), and every figure measured meanwhile is slowed by as much.
 */
export function steadiness(ms = 2000): Steadiness {
  const passes: number[] = [];
  let sink = 0;
  const start = performance.now();
  while (performance.now() - start < ms) {
    const t = performance.now();
    for (let i = 0; i < 2_000_000; i++) sink += i * 1e-9;
    passes.push(performance.now() - t);
  }
  if (sink < 0) throw new Error('unreachable');
  const best = Math.min(...passes);
  const total = passes.reduce((a, b) => a + b, 0);
  return { delivered: (best * passes.length) / total, worstMs: Math.max(...passes) };
}

export const describeSteadiness = ({ delivered, worstMs }: Steadiness): string =>
  `machine steadiness: a CPU-bound loop ran at ${Math.round(delivered * 100)}% of its best speed (longest pause-hit pass ${Math.round(worstMs)} ms)`;

/**
 * The CPU the figures come from, e.g. `cpu: AMD EPYC (family 25, model 17), 2 cores; widest vector
 * FMA for native code: AVX-512`. The learner's ratio to PyTorch depends on it more than on anything
 * else: wasm's FMAs are 128 bits wide, PyTorch's as wide as the CPU allows, and CPUs run the wide ones
 * at different rates (an AMD Zen 4 core runs 256- and 512-bit FMAs at twice the FLOPs of 128-bit ones;
 * a CPU with two 512-bit FMA units at four times). Family, model and flags come from /proc/cpuinfo
 * where there is one.
 */
export function describeCpu(): string {
  let info = '';
  try {
    info = readFileSync('/proc/cpuinfo', 'utf8').split('\n\n')[0] ?? '';
  } catch {
    // Not Linux: the model name alone.
  }
  const field = (name: string): string | undefined =>
    new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(info)?.[1]?.trim();
  const family = field('cpu family');
  const model = field('model');
  const flags = new Set((field('flags') ?? '').split(/\s+/));
  const widest = flags.has('avx512f')
    ? 'AVX-512'
    : flags.has('avx2') && flags.has('fma')
      ? 'AVX2 with FMA'
      : flags.size > 1
        ? 'no AVX2 FMA'
        : undefined;
  const id = family && model ? ` (family ${family}, model ${model})` : '';
  return (
    `cpu: ${cpus()[0]?.model.trim() ?? 'unknown'}${id}, ${availableParallelism()} cores` +
    (widest ? `; widest vector FMA for native code: ${widest}` : '')
  );
}
