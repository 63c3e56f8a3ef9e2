/**
 * rxrl's wasm kernels (the replaced stock kernels of src/policy/wasmKernels.ts; the SIMD kernels of
 * src/policy/simdKernels.ts: attention, LayerNorm, GELU, column sums, AdamW; and the relaxed-SIMD (FMA)
 * module of src/policy/gemmKernel.ts: the matmul, and the attention, GELU and exp it takes over) against
 * tfjs-backend-wasm's stock kernels alone, and the relaxed-SIMD module against XNNPACK's matmul and
 * simdKernels.ts's others, in one process: `npx tsx bench/kernels.ts [--rounds 5] [--size d:layers:heads] [--breakdown]`.
 *
 * Each round times one learner step (the real Learner: forward, GRPO loss, backward, clipping, AdamW on
 * 16 x 128 tokens, as bench/policy.ts) and one KV-cache sampling call (16 prompts x 128 new tokens, as bench/policy.ts) with
 * the stock kernels, with rxrl's but without the relaxed-SIMD module, and with all of rxrl's (after a warm-up call
 * each; the order turns each round), and takes the ratios within the round; the median over rounds is
 * reported, because this machine's speed swings several-fold.
 *
 * --breakdown then times every kernel call of `rounds` learner steps (rxrl's kernels), keyed by kernel and
 * input shapes, and prints the sum of the per-key medians beside the wall time: a host pause lands in
 * few calls of a key and moves its median little, so that sum is nearer than the wall time to what a
 * step's kernels cost on a machine that is not paused (though not free of pauses: an element-wise op
 * on a [2032, 512] activation has a median of several ms there, 0.35 ms in a tight loop). The gap to
 * the wall time is pauses plus tfjs's own JS (tape, engine).
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { version_wasm } from '@tensorflow/tfjs-backend-wasm';
import {
  ascending,
  BENCH_BATCH,
  describeCpu,
  describeSteadiness,
  learnerBatch,
  median,
  steadiness,
  time,
} from './common.ts';
import { DEFAULT_GRPO_LOSS } from '../src/grpo/loss.ts';
import { Learner } from '../src/learner/learner.ts';
import { selectBackend } from '../src/policy/backend.ts';
import { GPT } from '../src/policy/gpt.ts';
import { sample } from '../src/policy/sampler.ts';
import { installGemmKernel, uninstallGemmKernel } from '../src/policy/gemmKernel.ts';
import { installSimdKernels, uninstallSimdKernels } from '../src/policy/simdKernels.ts';
import { installWasmKernels, uninstallWasmKernels } from '../src/policy/wasmKernels.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    size: { type: 'string', default: '128:4:4' },
    breakdown: { type: 'boolean', default: false },
  },
});
const rounds = Number(values.rounds);
const [dModel, nLayers, nHeads] = values.size.split(':').map(Number) as [number, number, number];
if (!(rounds >= 1) || ![dModel, nLayers, nHeads].every((n) => Number.isInteger(n) && n > 0)) {
  throw new Error(`usage: --rounds <n >= 1> --size d:layers:heads (got ${values.rounds}, ${values.size})`);
}

await selectBackend('wasm');
const VOCAB = 102;
const model = new GPT({ vocabSize: VOCAB, contextLength: 160, dModel, nLayers, nHeads, seed: 1 });
const learner = new Learner(model, { loss: DEFAULT_GRPO_LOSS, learningRate: { peak: 1e-4 }, maxGradNorm: 1 });
const batch = learnerBatch({ ...BENCH_BATCH, vocab: VOCAB });
const prompts = Array.from({ length: 16 }, (_, b) =>
  Array.from({ length: 10 + (b % 7) }, (_, i) => ((i * 7 + b) % (VOCAB - 1)) + 1),
);
const sampling = { maxNewTokens: 128, temperature: 1, eosId: -1, seed: 1 };

const tasks = {
  [`learner step, ${BENCH_BATCH.rows} x ${BENCH_BATCH.length} tokens`]: {
    tokens: BENCH_BATCH.rows * BENCH_BATCH.length,
    run: () => void learner.train(batch),
  },
  'KV-cache sampling, 16 x 128 tokens': { tokens: 16 * 128, run: () => sample(model, prompts, sampling) },
};

console.log(describeCpu());
console.log(describeSteadiness(steadiness()));
console.log(`wasm, d=${dModel} layers=${nLayers} heads=${nHeads}, ${model.parameterCount()} parameters`);
for (const [name, task] of Object.entries(tasks)) {
  const ratios: number[] = [];
  const gemmRatios: number[] = [];
  for (let round = 0; round < rounds; round++) {
    // The order turns each round, so a machine speeding up or slowing down favours no side.
    const times = { stock: 0, withoutGemm: 0, rxrl: 0 };
    const sides = ['stock', 'withoutGemm', 'rxrl'] as const;
    for (const side of [...sides.slice(round % 3), ...sides.slice(0, round % 3)]) {
      uninstallGemmKernel();
      if (side === 'stock') {
        uninstallSimdKernels();
        uninstallWasmKernels();
      } else {
        installWasmKernels(version_wasm);
        await installSimdKernels(version_wasm);
        if (side === 'rxrl') await installGemmKernel(version_wasm);
      }
      // One warm-up call (the first after switching kernels), then one timed call.
      times[side] = (await time(1, task.run)).wall[0]!;
    }
    const { stock, withoutGemm, rxrl } = times;
    ratios.push(stock / rxrl);
    gemmRatios.push(withoutGemm / rxrl);
    const rate = (ms: number) => Math.round((task.tokens / ms) * 1000);
    console.log(
      `  ${name}, round ${round + 1}: stock ${rate(stock)} tok/s, rxrl without its relaxed-SIMD kernels ${rate(withoutGemm)} tok/s, ` +
        `rxrl ${rate(rxrl)} tok/s: ${(stock / rxrl).toFixed(2)}x stock, relaxed SIMD ${(withoutGemm / rxrl).toFixed(2)}x`,
    );
  }
  const summary = (xs: number[]): string => {
    xs.sort(ascending);
    return `${median(xs).toFixed(2)}x (median of ${rounds} rounds; ${xs[0]!.toFixed(2)} to ${xs[xs.length - 1]!.toFixed(2)})`;
  };
  console.log(`${name}: rxrl's kernels ${summary(ratios)} the stock kernels`);
  console.log(
    `${name}: rxrl's relaxed-SIMD kernels (gemmKernel.ts) ${summary(gemmRatios)} XNNPACK's matmul and simdKernels.ts's others`,
  );
}
if (values.breakdown) {
  await installSimdKernels(version_wasm);
  await installGemmKernel(version_wasm);
  breakdown();
}
console.log(describeSteadiness(steadiness()));
learner.dispose();
model.dispose();

/** Times each kernel call of `rounds` learner steps; see the file's comment. */
function breakdown(): void {
  installWasmKernels(version_wasm);
  const calls = new Map<string, number[]>();
  const wrapped = tf.getKernelsForBackend('wasm');
  for (const kernel of wrapped) {
    const { kernelFunc } = kernel;
    tf.unregisterKernel(kernel.kernelName, 'wasm');
    tf.registerKernel({
      kernelName: kernel.kernelName,
      backendName: 'wasm',
      kernelFunc: (args) => {
        const start = performance.now();
        const out = kernelFunc(args);
        const ms = performance.now() - start;
        const shapes = Object.values(args.inputs)
          .filter((t) => t !== undefined)
          .map((t) => `[${t.shape.join(',')}]`);
        const key = `${kernel.kernelName} ${shapes.join(' ')}`;
        const times = calls.get(key) ?? [];
        times.push(ms);
        calls.set(key, times);
        return out;
      },
    });
  }
  learner.train(batch);
  calls.clear();
  const start = performance.now();
  for (let i = 0; i < rounds; i++) learner.train(batch);
  const wall = (performance.now() - start) / rounds;
  for (const kernel of wrapped) {
    tf.unregisterKernel(kernel.kernelName, 'wasm');
    tf.registerKernel({ kernelName: kernel.kernelName, backendName: 'wasm', kernelFunc: kernel.kernelFunc });
  }
  const byKey = [...calls].map(([key, times]) => {
    const sorted = [...times].sort(ascending);
    const perStep = times.length / rounds;
    return {
      key,
      perStep,
      median: median(sorted) * perStep,
      total: times.reduce((a, b) => a + b, 0) / rounds,
    };
  });
  const sum = (f: (r: (typeof byKey)[number]) => number) => byKey.reduce((a, r) => a + f(r), 0);
  const medians = sum((r) => r.median);
  const tokens = BENCH_BATCH.rows * BENCH_BATCH.length;
  console.log(
    `\nlearner step breakdown (${rounds} steps): wall ${wall.toFixed(0)} ms, kernel calls ${sum((r) => r.perStep)} ` +
      `taking ${sum((r) => r.total).toFixed(0)} ms, of which per-call medians add up to ${medians.toFixed(0)} ms ` +
      `(${Math.round((tokens / medians) * 1000)} tok/s of kernel time)`,
  );
  const byName = new Map<string, { calls: number; ms: number }>();
  for (const r of byKey) {
    const name = r.key.split(' ')[0]!;
    const entry = byName.get(name) ?? { calls: 0, ms: 0 };
    entry.calls += r.perStep;
    entry.ms += r.median;
    byName.set(name, entry);
  }
  for (const [name, { calls: n, ms }] of [...byName].sort((a, b) => b[1].ms - a[1].ms).slice(0, 12)) {
    console.log(`  ${name.padEnd(16)} ${String(n).padStart(5)} calls ${ms.toFixed(1).padStart(8)} ms`);
  }
}
