/**
 * Throughput of the policy model (`npx tsx bench/policy.ts`), for a ~1M and a ~10M parameter model
 * on every installed tfjs backend, against PyTorch on the CPU in the same run:
 *
 *   sampling   16 prompts (10..16 tokens) x 128 new tokens, with the KV cache and with a full
 *              forward per token (the baseline the cache is measured against)
 *   learner    one optimiser step of the real Learner on 16 rows x 128 tokens (16 prompt +
 *              112 completion): forward, GRPO loss (DEFAULT_GRPO_LOSS), backward, global-norm
 *              clipping, AdamW; tokens/s counts all 128 tokens of each row, as the Learner does
 *   PyTorch    the same learner step in PyTorch on CPU (bench/torch/policy_bench.py: same model
 *              shape, batch, loss, clipping and optimiser), taking turns with the tfjs step: first
 *              both on one thread, then both on every core (PyTorch's intra-op threads; rxrl's
 *              kernels on helper threads, setBackendThreads, on the wasm backend). Installed the
 *              first time into the cached virtual environment .cache/bench-venv
 *              (bench/torch/requirements.txt); if python3 or the install fails, that is said and the
 *              tfjs side still runs
 *
 * The models have contextLength 160 (>= 16 + 128). It ends with a table and the issue's goals,
 * met or not, on the wasm backend: learner within 3x of PyTorch CPU (one thread each, and every
 * core each); KV cache >= 10x the full forward at 128 new tokens; for the ~1M model
 * >= 2,000 train tok/s and >= 4,000 sampled tok/s per core. Rates are of the median run; the "per
 * CPU-second" figures divide by this process's CPU time instead, which other processes on a busy
 * machine stretch less than wall time.
 *
 * Options: --backend <all|wasm|cpu|tensorflow|tensorflow-gpu>[,...] (default all: every installed
 * backend but the plain JS 'cpu' fallback, which is far slower; name it to include it),
 * --sizes <1m,10m or d:layers:heads,...>, --runs <n> (default 5), --full-runs <n> (full-forward
 * sampling runs, default 1: one takes minutes on the ~10M model; 0 skips it), --no-torch.
 */
import { createHash } from 'node:crypto';
import { spawn, spawnSync, type ChildProcessByStdio } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import {
  ascending,
  BENCH_BATCH,
  describeCpu,
  describeSteadiness,
  learnerBatch,
  median,
  sortTiming,
  steadiness,
  time,
  type Timing,
} from './common.ts';
import { describeFmaPeak, fmaPeak, type FmaPeak } from './fmaPeak.ts';
import { DEFAULT_GRPO_LOSS } from '../src/grpo/loss.ts';
import { Learner, type LearnerConfig } from '../src/learner/learner.ts';
import {
  selectBackend,
  setBackendThreads,
  type BackendKind,
  type BackendRequest,
} from '../src/policy/backend.ts';
import { GPT } from '../src/policy/gpt.ts';
import { sample, sampleFullForward, type SampleOptions } from '../src/policy/sampler.ts';
import { CharTokenizer } from '../src/policy/tokenizer.ts';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'all' },
    sizes: { type: 'string', default: '1m,10m' },
    runs: { type: 'string', default: '5' },
    'full-runs': { type: 'string', default: '1' },
    'no-torch': { type: 'boolean', default: false },
  },
});
const runs = positiveInt('runs', values.runs);
const fullRuns = values['full-runs'] === '0' ? 0 : positiveInt('full-runs', values['full-runs']);

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { rows: BATCH, promptLength: PROMPT_LENGTH, length: TRAIN_LENGTH } = BENCH_BATCH;
const NEW_TOKENS = 128;
const CONTEXT = 160;
const MLP_RATIO = 4;
const LEARNING_RATE = 1e-4;
const MAX_GRAD_NORM = 1;
const GOALS = { torchRatio: 3, kvSpeedup: 10, trainPerCore: 2000, sampledPerCore: 4000 };

interface Size {
  name: string;
  dModel: number;
  nLayers: number;
  nHeads: number;
}
const NAMED_SIZES: Record<string, Size> = {
  '1m': { name: '~1M', dModel: 128, nLayers: 4, nHeads: 4 },
  '10m': { name: '~10M', dModel: 384, nLayers: 6, nHeads: 6 },
};
const sizes: Size[] = values.sizes.split(',').map((s) => {
  const named = NAMED_SIZES[s.trim().toLowerCase()];
  if (named) return named;
  const [dModel, nLayers, nHeads] = s.split(':').map(Number);
  if (![dModel, nLayers, nHeads].every((n) => Number.isInteger(n) && n! > 0)) {
    throw new Error(`--sizes: '${s}' is neither 1m, 10m nor d:layers:heads`);
  }
  return { name: `d${dModel}L${nLayers}H${nHeads}`, dModel: dModel!, nLayers: nLayers!, nHeads: nHeads! };
});

const tokenizer = new CharTokenizer();
const VOCAB = tokenizer.vocabSize;

function positiveInt(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got '${text}'`);
  return n;
}

// ---------------------------------------------------------------------------------------------
// Rates.

interface Rate {
  /** Tokens per second of the median run (wall time). */
  median: number;
  fastest: number;
  /** Tokens per CPU-second of this process, median run. */
  perCpu: number;
}

function rate({ wall, cpu }: Timing, tokens: number): Rate {
  const perSecond = (ms: number): number => (tokens / ms) * 1000;
  return { median: perSecond(median(wall)), fastest: perSecond(wall[0]!), perCpu: perSecond(median(cpu)) };
}

const fmt = (x: number): string => Math.round(x).toLocaleString('en-US');

function report(name: string, r: Rate): Rate {
  console.log(
    `  ${name.padEnd(40)} median ${fmt(r.median).padStart(7)} tok/s | fastest ${fmt(r.fastest).padStart(7)}` +
      ` | per CPU-second ${fmt(r.perCpu).padStart(7)}`,
  );
  return r;
}

// ---------------------------------------------------------------------------------------------
// The tfjs side.

interface TfjsResult {
  backend: BackendKind;
  size: Size;
  parameters: number;
  kv: Rate;
  /** Undefined with --full-runs 0. */
  full: Rate | undefined;
  learner: Rate;
  /** PyTorch's same step, taking turns with the tfjs step; undefined when PyTorch is not measured. */
  torch?: PairedTorch;
}

interface PairedTorch {
  version: string;
  /** Both on one thread. */
  oneThread: Paired;
  /** Both on every core, taking turns the same way (undefined on a 1-core machine). */
  allThreads?: Paired & { threads: number; tfjsThreads: number };
}

/** One run of rounds in which the two learners took turns. */
interface Paired {
  tfjs: Rate;
  torch: Rate;
  /** PyTorch tok/s / tfjs tok/s of each round, ascending. */
  ratios: number[];
}

/**
 * FLOPs of a learner step per token: 6 per weight of the products (2 forward, 4 backward: the
 * layers' 12 d^2 at MLP ratio 4, and the output head) and 6 T d per layer for causal attention's
 * four products forward and back (half of the T x T blocks, T the row's length).
 */
function learnerFlopsPerToken({ dModel: d, nLayers }: Size): number {
  const weights = nLayers * (4 + 2 * MLP_RATIO) * d * d + d * VOCAB;
  return 6 * weights + 6 * nLayers * TRAIN_LENGTH * d;
}

/** `28.6 GFLOP/s (73% of the vector FMA ceiling)` for tokens/s at one size; the ceiling's share on wasm only. */
function flopRate(size: Size, tokensPerSecond: number, ceiling?: number): string {
  const gflops = (learnerFlopsPerToken(size) * tokensPerSecond) / 1e9;
  const share = ceiling ? ` (${Math.round((gflops / ceiling) * 100)}% of the vector FMA ceiling)` : '';
  return `${gflops.toFixed(1)} GFLOP/s${share}`;
}

function modelOf(size: Size): GPT {
  const { dModel, nLayers, nHeads } = size;
  return new GPT({
    vocabSize: VOCAB,
    contextLength: CONTEXT,
    dModel,
    nLayers,
    nHeads,
    mlpRatio: MLP_RATIO,
    seed: 1,
  });
}

/** Prompts of 10..16 tokens; EOS -1 never matches, so every row generates all NEW_TOKENS tokens. */
const prompts = Array.from({ length: BATCH }, (_, b) =>
  tokenizer.encode(`${b * 7} + ${b * 13} = `.padEnd(10 + (b % 7), ' ')),
);
const sampleOptions: SampleOptions = {
  maxNewTokens: NEW_TOKENS,
  temperature: 1,
  topP: 0.95,
  eosId: -1,
  seed: 1,
};

const learnerConfig: LearnerConfig = {
  loss: DEFAULT_GRPO_LOSS,
  learningRate: { peak: LEARNING_RATE },
  maxGradNorm: MAX_GRAD_NORM,
};

async function benchTfjs(backend: BackendKind, size: Size): Promise<TfjsResult> {
  const model = modelOf(size);
  const parameters = model.parameterCount();
  console.log(
    `\n${backend}, ${size.name}: d=${size.dModel} layers=${size.nLayers} heads=${size.nHeads} ` +
      `vocab=${VOCAB} context=${CONTEXT}, ${fmt(parameters)} parameters`,
  );
  const sampled = BATCH * NEW_TOKENS;
  const kv = report(
    `sampling ${BATCH}x${NEW_TOKENS}, KV cache`,
    rate(await time(runs, () => sample(model, prompts, sampleOptions)), sampled),
  );
  let full: Rate | undefined;
  if (fullRuns > 0) {
    // Warm up on a few tokens: a full run at this length takes minutes on the ~10M model.
    const fullForward = (maxNewTokens: number) => () =>
      sampleFullForward(model, prompts, { ...sampleOptions, maxNewTokens });
    full = report(
      `sampling ${BATCH}x${NEW_TOKENS}, full forward/token`,
      rate(await time(fullRuns, fullForward(NEW_TOKENS), fullForward(4)), sampled),
    );
    console.log(`  KV cache / full forward: ${(kv.median / full.median).toFixed(1)}x`);
  }

  const learner = new Learner(model, learnerConfig);
  const batch = learnerBatch({
    rows: BATCH,
    length: TRAIN_LENGTH,
    promptLength: PROMPT_LENGTH,
    vocab: VOCAB,
  });
  let tokens = 0;
  const tfjsStep = (): void => {
    const [r] = learner.train(batch);
    tokens = r!.tokens;
  };
  const trainTokens = BATCH * TRAIN_LENGTH;
  const server = python ? await TorchServer.start(python, size, parameters) : undefined;
  let step: Rate;
  let torch: PairedTorch | undefined;
  if (server && !('error' in server)) {
    // The two learners take turns, step by step (the order flips each round), and the ratio is taken
    // within each round: this machine's speed swings several-fold over minutes.
    const paired = async (): Promise<Paired> => {
      tfjsStep();
      const tfjsTimes: Timing = { wall: [], cpu: [] };
      const torchTimes: Timing = { wall: [], cpu: [] };
      const ratios: number[] = [];
      for (let round = 0; round < runs; round++) {
        let tfjsWall = 0;
        let torchWall = 0;
        for (const side of round % 2 === 0 ? ['tfjs', 'torch'] : ['torch', 'tfjs']) {
          if (side === 'torch') {
            const t = await server.step();
            torchTimes.wall.push(t.wall_ms);
            torchTimes.cpu.push(t.cpu_ms);
            torchWall = t.wall_ms;
          } else {
            const t = await time(1, tfjsStep, () => undefined);
            tfjsTimes.wall.push(t.wall[0]!);
            tfjsTimes.cpu.push(t.cpu[0]!);
            tfjsWall = t.wall[0]!;
          }
        }
        ratios.push(tfjsWall / torchWall);
      }
      return {
        tfjs: rate(sortTiming(tfjsTimes), trainTokens),
        torch: rate(sortTiming(torchTimes), trainTokens),
        ratios: ratios.sort(ascending),
      };
    };
    await setBackendThreads(1);
    const one = await paired();
    step = one.tfjs;
    torch = { version: server.version, oneThread: one };
    const cores = availableParallelism();
    if (cores > 1) {
      // Both on every core: PyTorch's intra-op threads, rxrl's kernels on its helper threads (wasm).
      await server.threads(cores);
      const tfjsThreads = await setBackendThreads(cores);
      torch.allThreads = { ...(await paired()), threads: cores, tfjsThreads };
      await setBackendThreads(1);
    }
    await server.close();
  } else {
    if (server) torchErrors.push(`${size.name}: ${server.error}`);
    step = rate(await time(runs, tfjsStep), trainTokens);
  }
  if (tokens !== trainTokens) throw new Error(`learner step saw ${tokens} tokens`);
  report(`learner step, ${BATCH}x${TRAIN_LENGTH} tokens`, step);
  const rounds = (ratios: number[]): string =>
    `  PyTorch / tfjs per round: median ${median(ratios).toFixed(1)}x ` +
    `(rounds ${ratios.map((r) => r.toFixed(1)).join(', ')})`;
  // The FLOP rates, beside what this machine's vector units allow a wasm kernel (bench/fmaPeak.ts).
  const flops = (who: string, r: Rate, ceiling?: number): void =>
    console.log(`  ${who.padEnd(40)} ${flopRate(size, r.median, backend === 'wasm' ? ceiling : undefined)}`);
  flops('  learner step, FLOP rate', step, fmaCeiling?.alone);
  if (torch) {
    report(`PyTorch ${torch.version} CPU, 1 thread, same step`, torch.oneThread.torch);
    flops('  PyTorch, FLOP rate', torch.oneThread.torch);
    console.log(rounds(torch.oneThread.ratios));
    const all = torch.allThreads;
    if (all) {
      report(`learner step, ${all.tfjsThreads} kernel thread(s)`, all.tfjs);
      flops('  learner step, FLOP rate', all.tfjs, fmaCeiling?.together);
      report(`PyTorch, ${all.threads} threads, same step`, all.torch);
      flops('  PyTorch, FLOP rate', all.torch);
      console.log(rounds(all.ratios));
    }
  }
  learner.dispose();
  model.dispose();
  return { backend, size, parameters, kv, full, learner: step, torch };
}

const BACKEND_PACKAGES: Record<BackendKind, string> = {
  'tensorflow-gpu': '@tensorflow/tfjs-node-gpu',
  tensorflow: '@tensorflow/tfjs-node',
  wasm: '@tensorflow/tfjs-backend-wasm',
  cpu: '@tensorflow/tfjs',
};

function backendsToRun(request: string): BackendRequest[] {
  const require = createRequire(import.meta.url);
  const installed = (Object.keys(BACKEND_PACKAGES) as BackendKind[]).filter((kind) => {
    try {
      require.resolve(BACKEND_PACKAGES[kind]);
      return true;
    } catch {
      return false;
    }
  });
  // The plain JS 'cpu' backend is the fallback of last resort, far slower than the others (one ~1M
  // learner step takes minutes): 'all' includes it only when nothing else is installed.
  if (request === 'all') return installed.length > 1 ? installed.filter((kind) => kind !== 'cpu') : installed;
  return request.split(',').map((r) => {
    const kind = r.trim();
    if (!(kind in BACKEND_PACKAGES) && kind !== 'auto') {
      throw new Error(`--backend: '${kind}' is not all, auto, ${Object.keys(BACKEND_PACKAGES).join(', ')}`);
    }
    return kind as BackendRequest;
  });
}

// ---------------------------------------------------------------------------------------------
// The PyTorch side.

const VENV = path.join(ROOT, '.cache', 'bench-venv');
const REQUIREMENTS = path.join(ROOT, 'bench', 'torch', 'requirements.txt');
const TORCH_SCRIPT = path.join(ROOT, 'bench', 'torch', 'policy_bench.py');
const relative = (p: string): string => path.relative(ROOT, p);

/** Last lines of a failed command's output, for the message. */
function tail(text: string | null | undefined, lines = 8): string {
  const kept = (text ?? '').trimEnd().split('\n').slice(-lines).join('\n    ');
  return kept ? `\n    ${kept}` : '';
}

/**
 * The venv's python, after creating .cache/bench-venv and installing bench/torch/requirements.txt
 * into it if that has not been done for this requirements file; a string saying what failed if not.
 */
function torchPython(): { python: string } | { error: string } {
  const python = path.join(VENV, 'bin', 'python');
  const stamp = path.join(VENV, 'requirements.sha256');
  const wanted = createHash('sha256').update(readFileSync(REQUIREMENTS)).digest('hex');
  if (existsSync(python) && existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === wanted) {
    return { python };
  }
  const version = spawnSync('python3', ['--version'], { encoding: 'utf8' });
  if (version.error || version.status !== 0) {
    return { error: `python3 is not available (${version.error?.message ?? `exit ${version.status}`})` };
  }
  if (!existsSync(python)) {
    console.log(`creating ${relative(VENV)} with ${version.stdout.trim()} (python3 -m venv)`);
    const venv = spawnSync('python3', ['-m', 'venv', VENV], { encoding: 'utf8' });
    if (venv.error || venv.status !== 0) {
      return {
        error:
          `\`python3 -m venv ${relative(VENV)}\` failed (${venv.error?.message ?? `exit ${venv.status}`}; ` +
          `on Debian/Ubuntu the python3-venv package provides venv)${tail(venv.stderr)}`,
      };
    }
  }
  console.log(
    `installing ${relative(REQUIREMENTS)} into ${relative(VENV)} (again whenever that file changes; ` +
      `the first install downloads PyPI's torch wheel with its CUDA libraries, about 3 GB)`,
  );
  const started = performance.now();
  const pip = spawnSync(python, ['-m', 'pip', 'install', '-r', REQUIREMENTS], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (pip.error || pip.status !== 0) {
    return {
      error: `\`pip install -r ${relative(REQUIREMENTS)}\` in ${relative(VENV)} failed (${pip.error?.message ?? `exit ${pip.status}`}; its output is above)`,
    };
  }
  console.log(`installed in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  writeFileSync(stamp, wanted + '\n');
  return { python };
}

/** bench/torch/policy_bench.py --serve: the same learner step in PyTorch, one step per request. */
class TorchServer {
  private readonly lines: AsyncIterator<string>;
  /** torch.__version__, from the server's first line. */
  version = '?';

  private constructor(private readonly child: ChildProcessByStdio<Writable, Readable, null>) {
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  }

  static async start(
    python: string,
    size: Size,
    tfjsParameters: number,
  ): Promise<TorchServer | { error: string }> {
    const args = [
      TORCH_SCRIPT,
      '--serve',
      ...['--size', `${size.dModel}:${size.nLayers}:${size.nHeads}`],
      ...['--vocab', String(VOCAB), '--context', String(CONTEXT), '--mlp-ratio', String(MLP_RATIO)],
      ...['--batch', String(BATCH), '--prompt-length', String(PROMPT_LENGTH)],
      ...['--train-length', String(TRAIN_LENGTH)],
      ...['--eps-low', String(DEFAULT_GRPO_LOSS.epsLow), '--eps-high', String(DEFAULT_GRPO_LOSS.epsHigh)],
      ...['--max-grad-norm', String(MAX_GRAD_NORM), '--lr', String(LEARNING_RATE)],
    ];
    console.log(
      `  PyTorch: ${relative(python)} ${args.map((a) => (path.isAbsolute(a) ? relative(a) : a)).join(' ')}`,
    );
    const child = spawn(python, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    const server = new TorchServer(child);
    const ready = await server.next();
    if ('error' in ready) {
      child.kill();
      return { error: String(ready.error) };
    }
    const { torch: version, parameters } = ready as { torch: string; parameters: number };
    server.version = version;
    if (parameters !== tfjsParameters) {
      child.kill();
      // The comparison means nothing unless the two models are the same.
      throw new Error(
        `parameter counts differ for ${size.name}: tfjs ${tfjsParameters}, PyTorch ${parameters}; ` +
          `bench/torch/policy_bench.py no longer mirrors src/policy/gpt.ts`,
      );
    }
    return server;
  }

  async step(): Promise<{ wall_ms: number; cpu_ms: number }> {
    this.child.stdin.write('step\n');
    const answer = await this.next();
    if ('error' in answer) throw new Error(`PyTorch bench: ${answer.error}`);
    return answer as { wall_ms: number; cpu_ms: number };
  }

  async threads(n: number): Promise<void> {
    this.child.stdin.write(`threads ${n}\n`);
    const answer = await this.next();
    if ('error' in answer) throw new Error(`PyTorch bench: ${answer.error}`);
  }

  /** Ends the server and waits for its process to exit, so that it shares no CPU with what runs next. */
  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.stdin.end();
    await exited;
  }

  private async next(): Promise<Record<string, unknown> | { error: string }> {
    const { value, done } = await this.lines.next();
    if (done)
      return {
        error: `the PyTorch bench exited (${this.child.exitCode ?? 'no exit code yet'}) before answering`,
      };
    try {
      return JSON.parse(value) as Record<string, unknown>;
    } catch {
      return { error: `the PyTorch bench printed something other than JSON: ${value}` };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Run everything, then the summary.

console.log(describeCpu());
const steadyBefore = steadiness();
console.log(describeSteadiness(steadyBefore));
const fmaCeiling: FmaPeak | null = await fmaPeak(availableParallelism());
if (fmaCeiling) console.log(describeFmaPeak(fmaCeiling));
const results: TfjsResult[] = [];
const skipped: string[] = [];
const torchErrors: string[] = [];
let python: string | undefined;
if (values['no-torch']) {
  torchErrors.push('skipped (--no-torch)');
} else {
  const env = torchPython();
  if ('error' in env) {
    torchErrors.push(env.error);
    console.log(`\nPyTorch side not measured: ${env.error}\nThe tfjs side's figures stand.`);
  } else {
    python = env.python;
  }
}
for (const request of backendsToRun(values.backend)) {
  let backend: BackendKind;
  try {
    backend = await selectBackend(request);
  } catch (error) {
    skipped.push(`${request}: ${(error as Error).message}`);
    console.log(`\n${request}: skipped, ${(error as Error).message}`);
    continue;
  }
  for (const size of sizes) results.push(await benchTfjs(backend, size));
}
console.log(`\ntensors alive: ${tf.memory().numTensors}`);

console.log(
  `\nSummary: tok/s of the median run (per CPU-second in brackets). Sampling ${BATCH}x${NEW_TOKENS} new ` +
    `tokens; learner step ${BATCH}x${TRAIN_LENGTH} tokens (${PROMPT_LENGTH} prompt + ` +
    `${TRAIN_LENGTH - PROMPT_LENGTH} completion), context ${CONTEXT}, vocab ${VOCAB}.`,
);
const measuredTorch = results.find((r) => r.torch)?.torch;
if (measuredTorch) {
  console.log(
    `PyTorch ${measuredTorch.version}, CPU; ratio = PyTorch tok/s / tfjs tok/s, median of rounds in which ` +
      `the two took turns.`,
  );
}
const both = (r: Rate): string => `${fmt(r.median)} (${fmt(r.perCpu)})`;
const header = ['backend', 'model', 'params', 'KV sampling', 'full forward', 'KV/full', 'learner'];
const allThreads = availableParallelism();
if (measuredTorch) {
  header.push('PyTorch 1 thread', 'ratio');
  if (allThreads > 1) header.push(`learner ${allThreads} threads`, `PyTorch ${allThreads} threads`, 'ratio');
}
const rows = results.map((r) => {
  const row = [
    r.backend,
    r.size.name,
    `${(r.parameters / 1e6).toFixed(2)}M`,
    both(r.kv),
    r.full ? both(r.full) : '-',
    r.full ? `${(r.kv.median / r.full.median).toFixed(1)}x` : '-',
    both(r.learner),
  ];
  if (r.torch) {
    const one = r.torch.oneThread;
    row.push(both(one.torch), `${median(one.ratios).toFixed(1)}x`);
    const all = r.torch.allThreads;
    if (all) row.push(both(all.tfjs), both(all.torch), `${median(all.ratios).toFixed(1)}x`);
  } else if (measuredTorch) {
    row.push('-', '-', ...(allThreads > 1 ? ['-', '-', '-'] : []));
  }
  return row;
});
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
for (const row of [header, ...rows]) console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  '));

// Goals (issue #3), judged on the wasm backend by the median wall-clock run.
console.log('\nGoals (wasm backend, median run; per CPU-second in brackets):');
const goal = (text: string, value: string, met: boolean): void =>
  console.log(`  ${text.padEnd(58)} ${value.padEnd(24)} ${met ? 'met' : 'NOT met'}`);
const wasm = results.filter((r) => r.backend === 'wasm');
if (wasm.length === 0) console.log('  not judged: the wasm backend was not measured');
for (const r of wasm) {
  if (r.torch) {
    const ratio = median(r.torch.oneThread.ratios);
    goal(
      `${r.size.name}: learner within ${GOALS.torchRatio}x of PyTorch CPU, 1 thread each`,
      `${ratio.toFixed(1)}x`,
      ratio <= GOALS.torchRatio,
    );
    const all = r.torch.allThreads;
    if (all) {
      const ratioAll = median(all.ratios);
      goal(
        `${r.size.name}: learner within ${GOALS.torchRatio}x of PyTorch CPU, ${all.threads} cores each`,
        `${ratioAll.toFixed(1)}x`,
        ratioAll <= GOALS.torchRatio,
      );
    }
  } else {
    console.log(
      `  ${r.size.name}: learner vs PyTorch not judged: ${torchErrors.join('; ') || 'no PyTorch result'}`,
    );
  }
  if (r.full) {
    const speedup = r.kv.median / r.full.median;
    goal(
      `${r.size.name}: KV cache >= ${GOALS.kvSpeedup}x full forward at ${NEW_TOKENS} new tokens`,
      `${speedup.toFixed(1)}x (${(r.kv.perCpu / r.full.perCpu).toFixed(1)}x)`,
      speedup >= GOALS.kvSpeedup,
    );
  } else {
    console.log(`  ${r.size.name}: KV cache vs full forward not judged (--full-runs 0)`);
  }
  if (r.size === NAMED_SIZES['1m']) {
    goal(
      `${r.size.name}: >= ${fmt(GOALS.trainPerCore)} train tok/s per core`,
      `${fmt(r.learner.median)} (${fmt(r.learner.perCpu)})`,
      r.learner.median >= GOALS.trainPerCore,
    );
    goal(
      `${r.size.name}: >= ${fmt(GOALS.sampledPerCore)} sampled tok/s per core (KV cache)`,
      `${fmt(r.kv.median)} (${fmt(r.kv.perCpu)})`,
      r.kv.median >= GOALS.sampledPerCore,
    );
  }
}
console.log(`\nbefore: ${describeSteadiness(steadyBefore)}\nafter:  ${describeSteadiness(steadiness())}`);
const fmaAfter = fmaCeiling ? await fmaPeak(availableParallelism()) : null;
if (fmaCeiling && fmaAfter) {
  console.log(`before: ${describeFmaPeak(fmaCeiling)}\nafter:  ${describeFmaPeak(fmaAfter)}`);
}
if (skipped.length > 0) console.log(`\nbackends skipped:\n  ${skipped.join('\n  ')}`);
