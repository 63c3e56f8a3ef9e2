/**
 * What the benches share: the learner's bench batch (the rows bench/torch/policy_bench.py builds too)
 * and timing that keeps wall and CPU time of each run.
 */
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
