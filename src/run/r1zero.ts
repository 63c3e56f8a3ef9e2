import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { EMPTY, Subject, concatMap, filter, from, lastValueFrom, tap, type Observable } from 'rxjs';
import type { GradientBatch, Rollout, ScoredRollout } from '../../schemas/index.ts';
import { versionReport, type StepReport } from '../learner/learner.ts';
import { metricKey, Metrics } from '../metrics/metrics.ts';
import { StalenessGate } from '../operators/boundedStaleness.ts';
import { dropZeroVariance } from '../operators/dropZeroVariance.ts';
import { groupRelativeAdvantages } from '../operators/groupRelativeAdvantages.ts';
import { groupSamples } from '../operators/groupSamples.ts';
import { scoreRollouts } from '../operators/scoreRollouts.ts';
import { toGradientBatches } from '../operators/toGradientBatches.ts';
import { selectBackend, type BackendRequest } from '../policy/backend.ts';
import { loadCheckpoint } from '../policy/checkpoint.ts';
import { CharTokenizer } from '../policy/tokenizer.ts';
import { DynamicSamplingBudget, nextRoundPrompts, StalenessAdmission } from '../scheduling/admission.ts';
import type { Topology } from '../topology/topology.ts';
import { checkHeldOut, evaluate, type EvalResult } from './evaluate.ts';
import { ensureBaseModel, modelConfig } from './pretrain.ts';
import {
  DataOrder,
  advantageOptions,
  learnerConfig,
  meanStaleness,
  recordStep,
  RolloutWindow,
  withThreads,
  type RolloutStats,
} from './stepStats.ts';
import { rewardsReady, taskRuntime } from './taskRuntime.ts';
import type { GeneratorReply, GeneratorRequest, LearnerReply, LearnerRequest } from './workers/protocol.ts';
import { WorkerClient } from './workers/rpc.ts';
import { buffersOf, exportWeights, type WeightArrays } from './workers/weights.ts';

export type { RolloutStats } from './stepStats.ts';

export interface RunOptions {
  topology: Topology;
  backend: BackendRequest;
  /** Where the run writes metrics.jsonl, checkpoints and its summary. */
  runDir: string;
  /** Where base models are cached between runs. */
  cacheDir: string;
  resume?: boolean;
  /**
   * Start from this checkpoint (a recipe's SFT stage) instead of the topology's pretrained base model; its
   * model shape is used, and its tokenizer must be the task's.
   */
  init?: string;
  /**
   * Threads for the learner's kernels on the wasm backend: its worker and learnerThreads - 1 helpers
   * (default: defaultLearnerThreads()). Results do not depend on it.
   */
  learnerThreads?: number;
  /** Overrides topology.run.steps (e.g. short test runs). */
  steps?: number;
  /** Overrides topology.grpo.eta. */
  eta?: number;
  metrics?: Metrics;
  /** Every scored completion as it is scored (dashboards list recent ones). */
  onCompletion?: (sample: ScoredRollout) => void;
  /** Progress events for a display. */
  onEvent?: (event: RunEvent) => void;
}

export type RunEvent =
  | { kind: 'backend'; generator: string; learner: string }
  | { kind: 'pretrain'; step: number; total: number; loss: number }
  | { kind: 'base-model'; dir: string; cached: boolean }
  | { kind: 'eval'; step: number; result: EvalResult }
  | {
      kind: 'step';
      step: number;
      total: number;
      report: StepReport;
      rollout: RolloutStats;
      staleness: number;
    }
  | { kind: 'checkpoint'; step: number; dir: string }
  /** The run directory held an earlier run (at `step`, if its state is readable), moved to `movedTo`. */
  | { kind: 'replacing'; dir: string; step: number | undefined; movedTo: string };

/** The policy version a run's state.json records, if it can be read. */
function stepOf(statePath: string): number | undefined {
  try {
    return (JSON.parse(readFileSync(statePath, 'utf8')) as RunState).version;
  } catch {
    return undefined;
  }
}

/** Where every generated sample ended: the counts add up to `generated` (nothing is lost). */
export interface Accounting {
  generated: number;
  trained: number;
  drops: Record<string, number>;
}

export interface RunSummary {
  steps: number;
  seconds: number;
  /** Held-out evaluations; `seconds` is the RL wall-clock so far, evaluation time excluded. */
  evals: { step: number; seconds: number; result: EvalResult }[];
  accounting: Accounting;
  backend: { generator: string; learner: string };
}

/**
 * The state a resumed run goes on from: state.json when it is at the checkpoint's version; else (a run
 * stopped after saving the checkpoint and before state.json, or during its write) the state the checkpoint
 * was saved with.
 */
function resumeState(statePath: string, checkpoint: { policyVersion: number; metadata?: unknown }): RunState {
  let fromFile: RunState | undefined;
  try {
    fromFile = JSON.parse(readFileSync(statePath, 'utf8')) as RunState;
  } catch {
    // Unreadable (cut off mid-write): the checkpoint's own state below.
  }
  if (fromFile?.version === checkpoint.policyVersion) return fromFile;
  const saved = checkpoint.metadata as Partial<RunState> | undefined;
  if (saved?.version === checkpoint.policyVersion && typeof saved.trainedCursor === 'number')
    return saved as RunState;
  if (fromFile) return fromFile; // the version check after the workers start names the mismatch
  throw new Error(`resume: ${statePath} cannot be read, and the checkpoint holds no run state`);
}

interface RunState {
  /**
   * Position in the data order (a pure function of seed and cursor) just past the last prompt trained
   * on: a resumed run regenerates from here, so samples in flight at a checkpoint are not skipped.
   */
  trainedCursor: number;
  version: number;
  /**
   * This run's counters (a shared Metrics's earlier counts left out): at the checkpoint, and at the
   * end of a run that ended normally. A resumed run goes on from them, so that metrics.jsonl's totals
   * carry on and its accounting covers the whole run.
   */
  counters?: { name: string; labels?: Record<string, string>; value: number }[];
  /**
   * The held-out evaluations taken so far (before RL at step 0, and on the way): a resumed run's
   * summary starts with them, so that its first figure is still the one from before RL.
   */
  evals?: RunSummary['evals'];
  /** RL wall-clock seconds up to the checkpoint, evaluations excluded: a resumed run's evaluations go on from it. */
  rlSeconds?: number;
}

/**
 * A resumed run's counters go on from the saved ones. Samples generated and not yet decided when they
 * were saved are regenerated (or skipped) by the resumed run: they count as dropped, reason `resumed`,
 * so that generated = trained + dropped holds over the whole run.
 */
function resumeCounters(metrics: Metrics, saved: NonNullable<RunState['counters']>): void {
  const value = (name: string) => saved.filter((c) => c.name === name).reduce((n, c) => n + c.value, 0);
  for (const c of saved) metrics.counter(c.name, c.labels).inc(c.value);
  const undecided = value('samples.generated') - value('samples.trained') - value('drops.samples');
  if (undecided > 0) metrics.counter('drops.samples', { reason: 'resumed' }).inc(undecided);
}

/**
 * The learner's kernel threads when a run does not say: every core but the one the generator's
 * worker keeps busy (1 on a 2-core machine). The main thread only routes messages.
 */
export function defaultLearnerThreads(): number {
  return Math.max(1, availableParallelism() - 1);
}

/**
 * R1-Zero in miniature: pure GRPO from a pretrained base model, generation and learning on their own
 * worker threads, overlapped within the staleness bound eta (0: synchronous).
 */

export async function runR1Zero(options: RunOptions): Promise<RunSummary> {
  const { topology } = options;
  const totalSteps = options.steps ?? topology.run.steps;
  const eta = options.eta ?? topology.grpo.eta;
  const { groupSize: G, promptsPerStep: P } = topology.grpo;
  const B = G * P;
  const emit = options.onEvent ?? (() => undefined);
  const metrics = options.metrics ?? new Metrics({ run: topology.name });
  // A shared Metrics (a recipe's stages) has counted earlier runs: this run's accounting is what it adds.
  const countedBefore = metrics.snapshot();
  const metricsLog = join(options.runDir, 'metrics.jsonl');
  const statePath = join(options.runDir, 'state.json');
  const checkpointDir = join(options.runDir, 'checkpoint');
  const resuming = options.resume === true && existsSync(statePath);
  if (options.resume && !resuming)
    throw new Error(`--resume: no checkpoint in ${options.runDir} to resume from`);
  // The main thread pretrains the base model; the workers pick their own backends the same way. First:
  // a backend that cannot start leaves the run directory as it was.
  await selectBackend(options.backend);
  // Likewise a reward that cannot score (a module of one's own that does not load).
  const runtime = taskRuntime(topology);
  // A jsonl test file shorter than data.testPrompts is refused now, before any training, as rxrl eval does.
  checkHeldOut(topology.name, runtime, topology.eval.prompts);
  await rewardsReady(runtime.rewards);
  if (!resuming && existsSync(statePath)) {
    // A new run where an earlier one left its state: the earlier run moves aside whole (checkpoint,
    // state, metrics, summary), so that nothing of the two mixes (--resume would continue one's
    // checkpoint with the other's metrics) and the earlier one can still be resumed from there.
    const previous = `${options.runDir.replace(/[\\/]+$/, '')}.previous`;
    try {
      rmSync(previous, { recursive: true, force: true });
      renameSync(options.runDir, previous);
    } catch (error) {
      throw new Error(
        `${options.runDir} holds an earlier run, which could not be moved to ${previous} (${(error as Error).message}): pass --resume to continue it, or another --run-dir`,
        { cause: error },
      );
    }
    emit({
      kind: 'replacing',
      dir: options.runDir,
      step: stepOf(join(previous, 'state.json')),
      movedTo: previous,
    });
  }
  mkdirSync(options.runDir, { recursive: true });
  if (!resuming) writeFileSync(metricsLog, '');
  const logSubscription = metrics.stream.subscribe((m) =>
    appendFileSync(metricsLog, `${JSON.stringify(m)}\n`),
  );
  const tokenizer = new CharTokenizer(runtime.alphabet);
  const started = performance.now();
  // The checkpoint a resumed run goes on from, loaded first: its metadata holds the run state it was saved
  // with, which stands in for a state.json left one checkpoint behind (a run stopped between the two).
  const resumedFrom = resuming ? await loadCheckpoint(checkpointDir) : undefined;
  let state: RunState = resumedFrom ? resumeState(statePath, resumedFrom) : { trainedCursor: 0, version: 0 };
  let cursor = state.trainedCursor;
  // This run's own counts, to save with its state.
  const ownCounters = () =>
    metrics
      .counterValues()
      .map((c) => ({ ...c, value: c.value - (countedBefore[metricKey(c.name, c.labels)] ?? 0) }))
      .filter((c) => c.value !== 0);
  if (resuming) resumeCounters(metrics, state.counters ?? []);
  // What state.json holds: the last checkpoint's state (a resumed run's, until it saves one).
  let saved: RunState | undefined = resuming ? state : undefined;
  // Written whole or not at all (a crash mid-write left truncated JSON that --resume could not read).
  const save = (next: RunState) => {
    saved = next;
    const temporary = `${statePath}.tmp-${process.pid}`;
    writeFileSync(temporary, JSON.stringify(next));
    renameSync(temporary, statePath);
  };
  // Data-order position of each group still in flight.
  const cursorOf = new Map<string, number>();
  const forget = (groupId: string) => cursorOf.delete(groupId);

  let weights: WeightArrays;
  let modelShape = modelConfig(topology, tokenizer);
  if (resumedFrom) {
    modelShape = resumedFrom.model.config;
    weights = exportWeights(resumedFrom.model);
    resumedFrom.model.dispose();
    for (const tensor of resumedFrom.optimizer.values()) tensor.dispose();
  } else if (options.init) {
    const ckpt = await loadCheckpoint(options.init);
    if (JSON.stringify(ckpt.tokenizer.spec()) !== JSON.stringify(tokenizer.spec())) {
      ckpt.model.dispose();
      throw new Error(
        `${options.init}: the checkpoint's tokenizer differs from the one ${topology.name}'s task uses`,
      );
    }
    modelShape = ckpt.model.config;
    weights = exportWeights(ckpt.model);
    ckpt.model.dispose();
  } else {
    const base = await ensureBaseModel({
      topology,
      runtime,
      tokenizer,
      cacheDir: options.cacheDir,
      metrics,
      onStep: (step, total, loss) => emit({ kind: 'pretrain', step, total, loss }),
    });
    emit({ kind: 'base-model', dir: base.dir, cached: base.cached });
    weights = exportWeights(base.model);
    base.model.dispose();
  }

  const generator = new WorkerClient<GeneratorRequest, GeneratorReply>(
    'generator',
    new URL('./workers/generator.worker.ts', import.meta.url),
  );
  const learner = new WorkerClient<LearnerRequest, LearnerReply>(
    'learner',
    new URL('./workers/learner.worker.ts', import.meta.url),
  );
  const init = {
    backend: options.backend,
    model: modelShape,
    tokenizer: tokenizer.spec(),
    version: state.version,
  };
  const g = topology.grpo;
  // A failure before the run's own try/finally (an init the workers refuse, a checkpoint of another
  // version, the first evaluation) closes the workers too, so a caller's process is not kept alive.
  const failSetUp = async (error: unknown): Promise<never> => {
    await Promise.all([generator.close(), learner.close()]).catch(() => undefined);
    logSubscription.unsubscribe();
    throw error;
  };
  const [genReady, learnReady] = await Promise.all([
    generator.request<Extract<GeneratorReply, { type: 'ready' }>>({ type: 'init', ...init, weights }),
    learner.request<Extract<LearnerReply, { type: 'ready' }>>({
      type: 'init',
      ...init,
      weights,
      ...(resuming ? { checkpoint: checkpointDir } : {}),
      config: learnerConfig(topology),
      threads: options.learnerThreads ?? defaultLearnerThreads(),
    }),
  ]).catch(failSetUp);
  const backend = { generator: genReady.backend, learner: withThreads(learnReady) };
  emit({ kind: 'backend', ...backend });
  if (learnReady.version !== state.version) {
    await failSetUp(
      new Error(`resume: checkpoint is at version ${learnReady.version}, run state at ${state.version}`),
    );
  }

  const evalSettings = { ...topology.eval, maxNewTokens: topology.sampling.maxNewTokens };
  const evals: RunSummary['evals'] = resuming ? [...(state.evals ?? [])] : [];
  let rlStarted = performance.now();
  let evalSeconds = 0;
  // RL seconds before this process (a resumed run's), so that its evaluations' seconds go on from them.
  const rlBefore = resuming ? (state.rlSeconds ?? evals.at(-1)?.seconds ?? 0) : 0;
  const rlSeconds = () => rlBefore + (performance.now() - rlStarted) / 1000 - evalSeconds;
  const runEval = async (step: number) => {
    const evalStarted = performance.now();
    const result = await evaluate(generator, runtime, evalSettings, topology.seed + step);
    evalSeconds += (performance.now() - evalStarted) / 1000;
    evals.push({ step, seconds: rlSeconds(), result });
    metrics.record('eval/pass@1', result.pass1, step);
    metrics.record(`eval/pass@${topology.eval.k}`, result.passAtK[topology.eval.k] ?? result.pass1, step);
    metrics.record(`eval/cons@${topology.eval.k}`, result.consAtK, step);
    metrics.record('eval/format_rate', result.formatRate, step);
    metrics.record('eval/completion_length', result.meanLength, step);
    if (result.languageConsistency !== null)
      metrics.record('eval/language_consistency', result.languageConsistency, step);
    if (result.stepAccuracy !== null) metrics.record('eval/step_accuracy', result.stepAccuracy, step);
    emit({ kind: 'eval', step, result });
  };
  /** Whether the schedule evaluates after `step` (step 0 and the last are evaluated anyway). */
  const evaluatesAt = (step: number) =>
    topology.eval.every > 0 && step > 0 && step % topology.eval.every === 0 && step < totalSteps;
  /** The scheduled evaluation of `step`; the checkpoint of this step keeps it too (its counts stay the checkpoint's). */
  const scheduledEval = async (step: number) => {
    await runEval(step);
    if (saved?.version === step) save({ ...saved, evals });
  };
  if (!resuming) await runEval(0).catch(failSetUp);
  // A run stopped during the evaluation of its checkpoint's step evaluates that step now.
  else if (evaluatesAt(state.version) && evals.at(-1)?.step !== state.version)
    await scheduledEval(state.version).catch(failSetUp);
  rlStarted = performance.now();
  evalSeconds = 0;

  // --- the stream topology -------------------------------------------------------------------
  const admission = new StalenessAdmission({ eta, samplesPerStep: B, maxConcurrent: B * (eta + 1) });
  const rollouts = new Subject<Rollout>();
  const generated = metrics.counter('samples.generated');
  // Completion tokens sampled (a Kafka rollout worker's counter of the same name), for Prometheus's rate().
  const generatedTokens = metrics.counter('rollout.tokens');
  const trainedSamples = metrics.counter('samples.trained');
  const runEnded = metrics.counter('drops.samples', { reason: 'run_ended' });
  const window = new RolloutWindow();
  const dataOrder = new DataOrder(runtime.train, topology.seed);
  let done = state.version >= totalSteps;
  const budget = new DynamicSamplingBudget(g.maxGenerationRounds, B);
  let stopGeneration: () => void = () => undefined;
  const generationStopped = new Promise<void>((resolve) => (stopGeneration = resolve));

  const train = (batch: GradientBatch): Observable<void> =>
    from(
      (async () => {
        if (done) {
          runEnded.inc(batch.samples.length);
          return;
        }
        const staleness = meanStaleness(batch, state.version);
        const reply = await learner.request<Extract<LearnerReply, { type: 'trained' }>>({
          type: 'train',
          batch,
        });
        trainedSamples.inc(batch.samples.length);
        budget.stepped();
        let trainedCursor = state.trainedCursor;
        for (const s of batch.samples) {
          trainedCursor = Math.max(trainedCursor, (cursorOf.get(s.groupId) ?? -1) + 1);
          forget(s.groupId);
        }
        state = { trainedCursor, version: reply.version };
        await generator.request(
          { type: 'weights', version: reply.version, weights: reply.weights },
          buffersOf(reply.weights),
        );
        admission.trained(batch.samples.length);
        const rollout = window.take();
        const step = reply.version;
        recordStep(metrics, step, rollout, staleness, reply.reports);
        emit({
          kind: 'step',
          step,
          total: totalSteps,
          report: versionReport(reply.reports),
          rollout,
          staleness,
        });
        // Every checkpointEvery steps, and always the last (0: the last only), as a recipe stage does.
        if (
          (topology.run.checkpointEvery > 0 && step % topology.run.checkpointEvery === 0) ||
          step >= totalSteps
        ) {
          const next: RunState = { ...state, counters: ownCounters(), evals, rlSeconds: rlSeconds() };
          await learner.request({ type: 'save', dir: checkpointDir, metadata: { ...next } });
          save(next);
          emit({ kind: 'checkpoint', step, dir: checkpointDir });
        }
        if (evaluatesAt(step)) await scheduledEval(step);
        if (step >= totalSteps) {
          done = true;
          stopGeneration();
        }
      })(),
    );

  const stalenessGate = new StalenessGate({
    eta,
    metrics,
    onStale: (stale) => {
      admission.discarded(stale.length);
      for (const s of stale) forget(s.groupId);
    },
  });
  stalenessGate.setVersion(state.version);
  const pipeline = rollouts.pipe(
    scoreRollouts({ rewards: runtime.rewards, metrics }),
    tap((s) => {
      window.add(s);
      options.onCompletion?.(s);
    }),
    groupSamples({
      maxWaitMs: topology.grpo.groupTimeoutMs,
      metrics,
      onIncomplete: (grp) => {
        forget(grp.groupId);
        // All G of its samples were accepted when generated: the ones still to come arrive late (dropped).
        admission.discarded(grp.expected);
        budget.dropped(grp.expected, `incomplete_${grp.reason}`);
      },
    }),
    g.dynamicSampling
      ? dropZeroVariance({
          metrics,
          onDrop: (grp) => {
            forget(grp.groupId);
            admission.discarded(grp.samples.length);
            budget.dropped(grp.samples.length, 'zero_variance');
          },
        })
      : filter(() => true),
    groupRelativeAdvantages({ ...advantageOptions(topology), metrics }),
    toGradientBatches({ limit: { samples: B }, metrics }),
    // Staleness is judged as the learner takes each batch, by the version it trains at: a batch that
    // waited behind another's training is that much older.
    concatMap((batch) => {
      // After the last step nothing is judged: what is left ends as run_ended (train counts it).
      const admitted = done ? batch : stalenessGate.admit(batch, state.version);
      return admitted ? train(admitted) : EMPTY;
    }),
  );
  const finished = lastValueFrom(pipeline, { defaultValue: undefined });
  // Training that fails (the learner, a checkpoint, an evaluation, an onEvent that throws) stops
  // generation: it would otherwise wait for admission capacity that only training frees, and the run
  // would never settle. The failure is rethrown by `await finished` below.
  finished.catch(() => {
    done = true;
    stopGeneration();
  });

  // --- generation: as far ahead as the admission control allows ------------------------------
  const round = { eta, groupSize: G, promptsPerStep: P };
  const generation = (async () => {
    while (!done) {
      if (nextRoundPrompts(admission.capacity, round) === 0) {
        await Promise.race([
          new Promise<void>((resolve) => {
            const sub = admission.capacity$.subscribe((c) => {
              if (nextRoundPrompts(c, round) > 0 || done) {
                queueMicrotask(() => sub.unsubscribe());
                resolve();
              }
            });
          }),
          generationStopped,
        ]);
        continue;
      }
      const n = nextRoundPrompts(admission.capacity, round);
      const prompts = Array.from({ length: n }, (_, i) => {
        const { example, epoch } = dataOrder.at(cursor + i);
        const prompt = runtime.prompt(example, `@${epoch}`);
        cursorOf.set(prompt.id, cursor + i);
        return prompt;
      });
      const seed = topology.seed * 7919 + cursor;
      cursor += n;
      admission.started(n * G);
      const reply = await generator.request<Extract<GeneratorReply, { type: 'rollouts' }>>({
        type: 'generate',
        prompts,
        groupSize: G,
        sampling: topology.sampling,
        seed,
      });
      admission.finished(n * G);
      generated.inc(reply.rollouts.length);
      generatedTokens.inc(reply.tokens);
      window.generated(reply.tokens, reply.seconds);
      for (const r of reply.rollouts) rollouts.next(r);
    }
  })();

  try {
    try {
      await generation;
    } catch (err) {
      finished.catch(() => undefined); // the generation error is the one to report
      rollouts.error(err);
      throw err;
    }
    rollouts.complete();
    await finished;
    // The run's final counts (drops at its end included) go with its last checkpoint's state.
    const atCheckpoint = saved?.version === state.version;
    if (atCheckpoint) save({ ...saved!, counters: ownCounters(), evals });
    // A resumed run that had already finished has evaluated this version.
    if (evals.at(-1)?.step !== state.version) {
      await runEval(state.version);
      // And its last evaluation, for a run that goes on from it.
      if (atCheckpoint) save({ ...saved!, evals });
    }
  } finally {
    await Promise.all([generator.close(), learner.close()]);
    // The last counts (drops at the end of the run included) reach metrics.jsonl and subscribers.
    metrics.flush(state.version);
    logSubscription.unsubscribe();
  }

  const counts = Object.fromEntries(
    Object.entries(metrics.snapshot()).map(([key, value]) => [key, value - (countedBefore[key] ?? 0)]),
  );
  const drops: Record<string, number> = {};
  for (const [key, value] of Object.entries(counts)) {
    const m = /^drops\.samples\{reason=(.+)\}$/.exec(key);
    if (m && value > 0) drops[m[1]!] = value;
  }
  const summary: RunSummary = {
    steps: state.version,
    seconds: (performance.now() - started) / 1000,
    evals,
    accounting: {
      generated: counts['samples.generated'] ?? 0,
      trained: counts['samples.trained'] ?? 0,
      drops,
    },
    backend,
  };
  writeFileSync(join(options.runDir, 'summary.json'), JSON.stringify(summary, null, 2));
  return summary;
}
