/**
 * Throughput of the policy model on the backend `selectBackend` picks (`npx tsx bench/policy.ts`):
 * sampling with the KV cache vs a full forward per token (16 prompts x 48 new tokens), and one
 * forward + backward of sequenceLogProbs (16 x 64 tokens). TFJS.md has the reference numbers.
 * Options: --backend <auto|wasm|cpu|...>, --runs <n>, --d <dModel>, --layers <n>, --heads <n>.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, type BackendRequest } from '../src/policy/backend.ts';
import { GPT } from '../src/policy/gpt.ts';
import { sample, sampleFullForward, type SampleOptions } from '../src/policy/sampler.ts';
import { CharTokenizer } from '../src/policy/tokenizer.ts';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'auto' },
    runs: { type: 'string', default: '5' },
    d: { type: 'string', default: '128' },
    layers: { type: 'string', default: '4' },
    heads: { type: 'string', default: '4' },
  },
});
const runs = Number(values.runs);
const backend = await selectBackend(values.backend as BackendRequest);

const BATCH = 16;
const NEW_TOKENS = 48;
const TRAIN_LENGTH = 64;
const tokenizer = new CharTokenizer();
const model = new GPT({
  vocabSize: tokenizer.vocabSize,
  contextLength: 64,
  dModel: Number(values.d),
  nLayers: Number(values.layers),
  nHeads: Number(values.heads),
  seed: 1,
});
console.log(
  `backend ${backend}; model d=${values.d} layers=${values.layers} heads=${values.heads} ` +
    `vocab=${tokenizer.vocabSize} context=64: ${(model.parameterCount() / 1e6).toFixed(2)}M parameters`,
);

interface Timing {
  /** Wall times of the runs in ms, fastest first. */
  wall: number[];
  /** CPU time (user + system) of this process in each run, least first. */
  cpu: number[];
}

/** Times `runs` calls after one warm-up call. */
async function time(f: () => Promise<unknown> | unknown): Promise<Timing> {
  await f();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    const startCpu = process.cpuUsage();
    await f();
    const used = process.cpuUsage(startCpu);
    wall.push(performance.now() - start);
    cpu.push((used.user + used.system) / 1000);
  }
  const ascending = (a: number, b: number): number => a - b;
  return { wall: wall.sort(ascending), cpu: cpu.sort(ascending) };
}

/**
 * Prints tokens per second of the median run, of the fastest run, and per CPU-second of this
 * process: on a shared machine other processes stretch the wall time, less so the CPU time.
 */
function report(name: string, { wall, cpu }: Timing, tokens: number): number {
  const median = (xs: number[]): number => xs[Math.floor(xs.length / 2)]!;
  const rate = (ms: number): string => ((tokens / ms) * 1000).toFixed(0).padStart(6);
  console.log(
    `${name.padEnd(34)} median ${median(wall).toFixed(0).padStart(6)} ms ${rate(median(wall))} tok/s` +
      ` | fastest ${rate(wall[0]!)} tok/s | per CPU-second ${rate(median(cpu))} tok/s`,
  );
  return (tokens / median(wall)) * 1000;
}

// Prompts of 10..16 tokens; EOS -1 never matches, so every row generates all 48 tokens.
const prompts = Array.from({ length: BATCH }, (_, b) =>
  tokenizer.encode(`${b * 7} + ${b * 13} = `.padEnd(10 + (b % 7), ' ')),
);
const options: SampleOptions = { maxNewTokens: NEW_TOKENS, temperature: 1, topP: 0.95, eosId: -1, seed: 1 };
const sampled = BATCH * NEW_TOKENS;
const kv = report('sampling, KV cache', await time(() => sample(model, prompts, options)), sampled);
const full = report(
  'sampling, full forward per token',
  await time(() => sampleFullForward(model, prompts, options)),
  sampled,
);
console.log(`KV cache / full forward: ${(kv / full).toFixed(1)}x`);

const ids = tf.tensor2d(
  Int32Array.from({ length: BATCH * TRAIN_LENGTH }, (_, i) => (i * 31) % tokenizer.vocabSize),
  [BATCH, TRAIN_LENGTH],
  'int32',
);
const mask = tf.onesLike(ids).cast('float32') as tf.Tensor2D;
const trainStep = (): void => {
  const { value, grads } = tf.variableGrads(
    () => tf.sum(model.sequenceLogProbs(ids, mask, 1)),
    model.variables(),
  );
  tf.dispose([value, ...Object.values(grads)]);
};
report(`forward+backward, ${BATCH}x${TRAIN_LENGTH} tokens`, await time(trainStep), BATCH * TRAIN_LENGTH);
console.log(`tensors alive: ${tf.memory().numTensors}`);
