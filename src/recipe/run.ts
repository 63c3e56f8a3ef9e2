import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { Metrics } from '../metrics/metrics.ts';
import { selectBackend, withBackendThreads, type BackendRequest } from '../policy/backend.ts';
import { isCheckpoint, loadCheckpoint, saveCheckpoint } from '../policy/checkpoint.ts';
import { CharTokenizer } from '../policy/tokenizer.ts';
import { evaluateCheckpoint, openCheckpointGenerator, type EvalResult } from '../run/evaluate.ts';
import { ensureBaseModel } from '../run/pretrain.ts';
import { runR1Zero, type RunEvent } from '../run/r1zero.ts';
import { rewardsReady, taskRuntime, topologyRewards } from '../run/taskRuntime.ts';
import {
  grpoTopology,
  outputPath,
  rewardModelStage,
  pretrainTopology,
  stageInputs,
  type Recipe,
  type Stage,
  type StageOf,
} from './recipe.ts';
import { coldStartRecords, readRecords, writeRecords, type SftRecord } from './records.ts';
import { rejectionSample } from './rejection.ts';
import { loadPreferencePairs } from '../rewards/preferencePairs.ts';
import { pairwiseAccuracy, trainPreferenceModel } from '../rewards/preferenceModel.ts';
import { trainOnRecords } from './sft.ts';

export interface RecipeRunOptions {
  recipe: Recipe;
  backend: BackendRequest;
  /** Each stage writes under <runDir>/<stage name>/. */
  runDir: string;
  /** Where base models are cached between runs. */
  cacheDir: string;
  /** Stages to run again although their output exists ('all': every stage); the stages after them that read their output follow. */
  redo?: readonly string[] | 'all';
  /** Stop after this stage. */
  until?: string;
  /**
   * Threads for GRPO stages' learner kernels on the wasm backend: its worker and learnerThreads - 1
   * helpers (default: every core but the generator's). The stages that train on this thread use every
   * core. Results do not depend on it.
   */
  learnerThreads?: number;
  metrics?: Metrics;
  onEvent?: (event: RecipeEvent) => void;
}

/** What `<runDir>/<stage>/stage.json` holds once a stage is done; its presence marks the stage done. */
export interface StageReport {
  stage: string;
  type: Stage['type'];
  /** The stage as declared when it ran. */
  definition: Stage;
  /**
   * What the stage was made from, part by part (madeFrom): its declaration, the recipe's topology, each
   * stage it read and each file on disk it read. A part that differs now makes the stage run again.
   */
  madeFrom?: Record<string, string>;
  output: string;
  seconds: number;
  finishedAt: string;
  summary: Record<string, unknown>;
}

export type RecipeEvent =
  | {
      kind: 'stage-start';
      stage: string;
      type: Stage['type'];
      index: number;
      total: number;
      /** Why it runs: not run before, --redo, what changed since it ran, or resumed. */
      reason: string;
    }
  | {
      kind: 'stage-skipped';
      stage: string;
      type: Stage['type'];
      index: number;
      total: number;
      report: StageReport;
    }
  | {
      kind: 'stage-done';
      stage: string;
      type: Stage['type'];
      index: number;
      total: number;
      report: StageReport;
    }
  | { kind: 'progress'; stage: string; what: string; step: number; total: number; loss?: number }
  | { kind: 'grpo'; stage: string; event: RunEvent };

export interface RecipeSummary {
  recipe: string;
  stages: StageReport[];
  ran: string[];
  skipped: string[];
  seconds: number;
}

/**
 * Runs a recipe's stages in order. A stage whose report and output exist is skipped (its output is reused)
 * unless `redo` names it or something it was made from changed since (madeFrom: its declaration, the
 * recipe's topology, a stage it reads that ran again, in this invocation or an earlier one, or a file it
 * reads); an interrupted GRPO stage resumes from its last checkpoint if nothing changed.
 */
export async function runRecipe(options: RecipeRunOptions): Promise<RecipeSummary> {
  const { recipe, runDir } = options;
  const emit = options.onEvent ?? (() => undefined);
  const metrics = options.metrics ?? new Metrics({ run: recipe.name });
  const names = recipe.stages.map((s) => s.name);
  const redo = options.redo === 'all' ? new Set(names) : new Set(options.redo ?? []);
  for (const name of [...redo, ...(options.until ? [options.until] : [])]) {
    if (!names.includes(name))
      throw new Error(`No stage named ${name} in ${recipe.name}: its stages are ${names.join(', ')}`);
  }
  // Every GRPO stage's rewards load now: a missing module stops the recipe here, not at that stage.
  for (const stage of recipe.stages)
    if (stage.type === 'grpo') await rewardsReady(topologyRewards(grpoTopology(recipe, stage)));
  mkdirSync(runDir, { recursive: true });
  await selectBackend(options.backend);
  const started = performance.now();
  const ran = new Set<string>();
  const reports: StageReport[] = [];
  const byName = new Map<string, StageReport>();
  const digests = new Map<string, string>();
  const total = recipe.stages.length;
  for (const [index, stage] of recipe.stages.entries()) {
    const dir = join(runDir, stage.name);
    const reportPath = join(dir, 'stage.json');
    const output = outputPath(runDir, stage);
    const previous = existsSync(reportPath)
      ? (JSON.parse(readFileSync(reportPath, 'utf8')) as StageReport)
      : undefined;
    if (stage.type === 'import') checkImport(stage);
    const madeFrom = stageMadeFrom(recipe, stage, index, byName, digests);
    const startedPath = join(dir, 'made-from.json');
    const done = previous !== undefined && existsSync(output);
    const changed = done ? changedParts(previous.madeFrom, madeFrom) : undefined;
    let report: StageReport;
    if (stage.type === 'import') {
      report = { ...stageReport(stage, output, 0, { path: output }), madeFrom };
      emit({ kind: 'stage-skipped', stage: stage.name, type: stage.type, index, total, report });
    } else if (done && !redo.has(stage.name) && changed === undefined) {
      report = previous;
      emit({ kind: 'stage-skipped', stage: stage.name, type: stage.type, index, total, report });
    } else {
      // Redone, changed or never finished: start clean, except an interrupted GRPO stage that was started
      // from what it would start from now, which resumes.
      const interrupted = stage.type === 'grpo' && !done && existsSync(join(dir, 'state.json'));
      const sinceStart = interrupted ? changedParts(readMadeFrom(startedPath), madeFrom) : undefined;
      const resume = interrupted && !redo.has(stage.name) && sinceStart === undefined;
      if (!resume) rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      writeFileSync(`${startedPath}.tmp`, JSON.stringify(madeFrom, null, 2));
      renameSync(`${startedPath}.tmp`, startedPath);
      const reason = (): string => {
        if (redo.has(stage.name)) return 'redo asked for';
        if (resume) return 'resumed from its last checkpoint';
        if (interrupted) return `interrupted earlier, started over: ${sinceStart}`;
        if (changed !== undefined) return changed;
        return previous === undefined ? 'not run before' : 'its output is missing';
      };
      emit({ kind: 'stage-start', stage: stage.name, type: stage.type, index, total, reason: reason() });
      const stageStarted = performance.now();
      // The stages that train on this thread (pretraining, SFT, the preference model) have the machine
      // to themselves: every core. A GRPO stage's learner worker gets learnerThreads (default: every
      // core but its generator's).
      const summary = await withBackendThreads(availableParallelism(), () =>
        runStage(stage, { ...options, metrics, emit, dir, output, index, resume }),
      );
      report = {
        ...stageReport(stage, output, (performance.now() - stageStarted) / 1000, summary),
        madeFrom,
      };
      writeFileSync(`${reportPath}.tmp`, JSON.stringify(report, null, 2));
      renameSync(`${reportPath}.tmp`, reportPath);
      ran.add(stage.name);
      emit({ kind: 'stage-done', stage: stage.name, type: stage.type, index, total, report });
    }
    reports.push(report);
    byName.set(stage.name, report);
    if (stage.name === options.until) break;
  }
  const summary: RecipeSummary = {
    recipe: recipe.name,
    stages: reports,
    ran: [...ran],
    skipped: reports.map((r) => r.stage).filter((name) => !ran.has(name)),
    seconds: (performance.now() - started) / 1000,
  };
  writeFileSync(join(runDir, 'recipe.json'), JSON.stringify(summary, null, 2));
  return summary;
}

function stageReport(
  stage: Stage,
  output: string,
  seconds: number,
  summary: Record<string, unknown>,
): StageReport {
  return {
    stage: stage.name,
    type: stage.type,
    definition: stage,
    output,
    seconds,
    finishedAt: new Date().toISOString(),
    summary,
  };
}

/**
 * What `stage` is made from now, part by part: `declaration` and `topology` (digests of the stage as
 * declared and of the recipe's topology, which every stage reads a part of), `seed` (its sampling and
 * shuffling seed, which its position sets: see stageSeed), `stage <name>` for each stage it reads (when
 * that stage's output was finished; an import's by its contents), and `file <path>` for each file or
 * directory on disk it reads (its contents): an import's, a jsonl task's files, and a GRPO stage's reward
 * modules and preference models given by path. A module's own imports are not followed. `digests` holds
 * the files' digests already taken in this invocation.
 */
function stageMadeFrom(
  recipe: Recipe,
  stage: Stage,
  index: number,
  reports: ReadonlyMap<string, StageReport>,
  digests: Map<string, string>,
): Record<string, string> {
  const parts: Record<string, string> = {
    declaration: digest(JSON.stringify(stage)),
    topology: digest(JSON.stringify(recipe.topology)),
    seed: String(stageSeed(recipe.topology, index)),
  };
  for (const input of stageInputs(stage, recipe.topology.rewards)) {
    const report = reports.get(input.name)!;
    parts[`stage ${input.name}`] =
      report.type === 'import' ? report.madeFrom![`file ${report.output}`]! : report.finishedAt;
  }
  const { task } = recipe.topology;
  const rewards = stage.type === 'grpo' ? (stage.rewards ?? recipe.topology.rewards) : [];
  const files = [
    ...(stage.type === 'import' ? [outputPath('', stage)] : []),
    ...(task.kind === 'jsonl' ? [task.train, task.test] : []),
    ...rewards.flatMap((r) =>
      r.kind === 'module' || (r.kind === 'preference_model' && rewardModelStage(r) === undefined)
        ? [r.path]
        : [],
    ),
  ];
  for (const path of files) {
    if (!digests.has(path)) digests.set(path, contentsDigest(path));
    parts[`file ${path}`] = digests.get(path)!;
  }
  return parts;
}

/** A stage's seed (sampling, shuffling, held-out choice): the topology's, plus 1000 x its position from 1. */
function stageSeed(topology: Recipe['topology'], index: number): number {
  return topology.seed + 1000 * (index + 1);
}

/** Why a stage made from `before` is out of date now (undefined: it is not). */
function changedParts(
  before: Record<string, string> | undefined,
  now: Record<string, string>,
): string | undefined {
  if (before === undefined) return 'no record of what it was made from (an older rxrl)';
  const changed = [...new Set([...Object.keys(before), ...Object.keys(now)])].filter(
    (k) => before[k] !== now[k],
  );
  return changed.length > 0 ? `changed since: ${changed.join(', ')}` : undefined;
}

/** The parts a stage was started from (its made-from.json), or undefined if there is no readable record. */
function readMadeFrom(path: string): Record<string, string> | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, string>;
  } catch {
    return undefined;
  }
}

const digest = (text: string | Buffer): string =>
  createHash('sha256').update(text).digest('hex').slice(0, 16);

/**
 * A digest of a file's contents, or of a directory's: each entry's relative path with its contents (a
 * regular file, or a link to one, with its target) or its target (a link to a directory, not followed),
 * in name order. 'missing' if the path is absent, 'unreadable: <code>' if it cannot be read.
 */
function contentsDigest(path: string): string {
  try {
    if (!existsSync(path)) return 'missing';
    if (!statSync(path).isDirectory()) return digest(readFileSync(path));
    const hash = createHash('sha256');
    const walk = (dir: string, prefix: string): void => {
      const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
      for (const entry of entries) {
        const relative = `${prefix}${entry.name}`;
        const at = join(dir, entry.name);
        if (entry.isDirectory()) walk(at, `${relative}/`);
        else if (entry.isSymbolicLink()) {
          // A link to a file counts by what it points at and its contents; one to a directory by where
          // it points only (not followed: no cycles).
          const target = statSync(at, { throwIfNoEntry: false });
          const contents = target?.isFile() ? digest(readFileSync(at)) : '';
          hash.update(`${relative}\0-> ${readlinkSync(at)}\0${contents}\0`);
        } else if (entry.isFile()) hash.update(`${relative}\0${digest(readFileSync(at))}\0`);
      }
    };
    walk(path, '');
    return hash.digest('hex').slice(0, 16);
  } catch (error) {
    return `unreadable: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`;
  }
}

function checkImport(stage: StageOf<'import'>): void {
  const path = (stage.checkpoint ?? stage.dataset)!;
  const present = stage.checkpoint !== undefined ? isCheckpoint(path) : existsSync(path);
  if (!present) {
    throw new Error(
      `${stage.name}: ${stage.checkpoint !== undefined ? 'no checkpoint (manifest.json) in' : 'no dataset file'} ${path}${stage.hint ? `: ${stage.hint}` : ''}`,
    );
  }
}

interface StageContext extends RecipeRunOptions {
  metrics: Metrics;
  emit: (event: RecipeEvent) => void;
  dir: string;
  output: string;
  index: number;
  resume: boolean;
}

async function runStage(stage: Stage, ctx: StageContext): Promise<Record<string, unknown>> {
  const { recipe } = ctx;
  const topology = recipe.topology;
  const runtime = taskRuntime(topology);
  const tokenizer = new CharTokenizer(runtime.alphabet);
  const seed = stageSeed(topology, ctx.index);
  const path = (name: string) => {
    const source = recipe.stages.find((s) => s.name === name)!;
    return outputPath(ctx.runDir, source);
  };
  const progress = (what: string) => (step: number, total: number, loss: number) => {
    if (step === 1 || step === total || step % 25 === 0)
      ctx.emit({ kind: 'progress', stage: stage.name, what, step, total, loss });
  };
  const records = (data: readonly string[]): SftRecord[] => data.flatMap((name) => readRecords(path(name)));
  const evalSettings = { ...topology.eval, maxNewTokens: topology.sampling.maxNewTokens };

  switch (stage.type) {
    case 'pretrain': {
      const t = pretrainTopology(recipe, stage);
      const base = await ensureBaseModel({
        topology: t,
        runtime,
        tokenizer,
        cacheDir: ctx.cacheDir,
        metrics: ctx.metrics,
        onStep: progress('pretrain'),
      });
      const parameters = base.model.parameterCount();
      await saveCheckpoint(ctx.output, {
        model: base.model,
        tokenizer,
        policyVersion: 0,
        metadata: { stage: stage.name, baseModel: base.dir },
      });
      base.model.dispose();
      return { baseModel: base.dir, cached: base.cached, parameters, model: t.model };
    }
    case 'coldStart': {
      const made = coldStartRecords(topology, runtime, stage.records);
      writeRecords(ctx.output, made);
      return { records: made.length };
    }
    case 'sft':
    case 'distill': {
      const from = stage.type === 'sft' ? stage.from : stage.student;
      const ckpt = await loadCheckpoint(path(from));
      try {
        const result = trainOnRecords({
          model: ckpt.model,
          tokenizer: ckpt.tokenizer,
          records: records(stage.data),
          steps: stage.steps,
          batchSize: stage.batchSize,
          learningRate: stage.learningRate,
          pack: stage.type === 'sft' ? stage.pack : false,
          heldOut: stage.type === 'sft' ? stage.heldOut : 32,
          seed,
          metrics: ctx.metrics,
          metricPrefix: `${stage.name}/sft`,
          onStep: progress('sft'),
        });
        await saveCheckpoint(ctx.output, {
          model: ckpt.model,
          tokenizer: ckpt.tokenizer,
          policyVersion: 0,
          metadata: { stage: stage.name, from },
        });
        if (stage.type === 'sft') return { ...result };
      } finally {
        ckpt.model.dispose();
      }
      // Distillation: the student beside its teacher, the R1 way, on the same held-out prompts and seed.
      const evalOf = (checkpoint: string) =>
        evaluateCheckpoint({ topology, backend: ctx.backend, checkpoint, settings: evalSettings, seed });
      const student = await evalOf(ctx.output);
      const teacher = await evalOf(path(stage.teacher));
      return { student: evalBrief(student), teacher: evalBrief(teacher) };
    }
    case 'grpo': {
      // A preference_model reward naming a rewardModel stage reads that stage's model.
      const stageTopology = grpoTopology(recipe, stage);
      stageTopology.rewards = stageTopology.rewards.map((reward) => {
        const source = rewardModelStage(reward);
        return source && reward.kind === 'preference_model' ? { ...reward, path: path(source) } : reward;
      });
      const summary = await runR1Zero({
        topology: stageTopology,
        backend: ctx.backend,
        ...(ctx.learnerThreads !== undefined ? { learnerThreads: ctx.learnerThreads } : {}),
        runDir: ctx.dir,
        cacheDir: ctx.cacheDir,
        init: path(stage.from),
        ...(ctx.resume ? { resume: true } : {}),
        metrics: ctx.metrics,
        onEvent: (event) => ctx.emit({ kind: 'grpo', stage: stage.name, event }),
      });
      const first = summary.evals[0];
      const last = summary.evals[summary.evals.length - 1];
      return {
        steps: summary.steps,
        rewards: (stage.rewards ?? topology.rewards).map((r) => r.kind),
        ...(first && last ? { before: evalBrief(first.result), after: evalBrief(last.result) } : {}),
        accounting: summary.accounting,
      };
    }
    case 'rejectionSample': {
      const opened = await openCheckpointGenerator(path(stage.from), runtime, ctx.backend, stage.name);
      try {
        const result = await rejectionSample({
          generator: opened.generator,
          runtime,
          prompts: stage.prompts,
          k: stage.k,
          keepPerPrompt: stage.keepPerPrompt,
          temperature: stage.temperature,
          maxNewTokens: topology.sampling.maxNewTokens,
          rules: {
            ...(stage.language ? { language: stage.language } : {}),
            minLanguageConsistency: stage.minLanguageConsistency,
            maxRepeats: stage.maxRepeats,
          },
          seed,
          source: stage.name,
          onProgress: (done, total) =>
            ctx.emit({ kind: 'progress', stage: stage.name, what: 'prompts', step: done, total }),
        });
        writeRecords(ctx.output, result.records);
        writeFileSync(pairsPath(ctx.output), result.pairs.map((p) => `${JSON.stringify(p)}\n`).join(''));
        const { records: _, pairs, ...counts } = result;
        return { ...counts, pairs: pairs.length };
      } finally {
        await opened.close();
      }
    }
    case 'rewardModel': {
      const pairs = stage.pairs.flatMap((name) => {
        const source = recipe.stages.find((s) => s.name === name)!;
        return loadPreferencePairs(source.type === 'rejectionSample' ? pairsPath(path(name)) : path(name));
      });
      const heldOut = pairs.slice(0, Math.min(stage.heldOut, Math.floor(pairs.length / 2)));
      const train = pairs.slice(heldOut.length);
      if (train.length === 0)
        throw new Error(
          `${stage.name}: no preference pairs in ${stage.pairs.join(', ')} (a pair needs a prompt with an accepted and a rejected sample)`,
        );
      const untrained = await trainPreferenceModel(train, {
        epochs: 0,
        hiddenUnits: stage.hiddenUnits,
        seed,
      });
      const model = await trainPreferenceModel(train, {
        epochs: stage.epochs,
        hiddenUnits: stage.hiddenUnits,
        seed,
        onEpoch: (e) =>
          ctx.emit({
            kind: 'progress',
            stage: stage.name,
            what: 'epoch',
            step: e.epoch,
            total: stage.epochs,
            loss: e.loss,
          }),
      });
      await model.save(ctx.output);
      return {
        trainPairs: train.length,
        heldOutPairs: heldOut.length,
        heldOutAccuracyBefore: heldOut.length > 0 ? pairwiseAccuracy(untrained, heldOut) : null,
        heldOutAccuracyAfter: heldOut.length > 0 ? pairwiseAccuracy(model, heldOut) : null,
      };
    }
    case 'eval': {
      const settings = {
        ...evalSettings,
        ...(stage.prompts ? { prompts: stage.prompts } : {}),
        ...(stage.k ? { k: stage.k } : {}),
        ...(stage.language ? { language: stage.language } : {}),
      };
      const results: Record<string, ReturnType<typeof evalBrief>> = {};
      for (const name of stage.checkpoints) {
        const result = await evaluateCheckpoint({
          topology,
          backend: ctx.backend,
          checkpoint: path(name),
          settings,
          seed,
        });
        results[name] = evalBrief(result);
      }
      mkdirSync(dirname(ctx.output), { recursive: true });
      writeFileSync(ctx.output, JSON.stringify({ settings, results }, null, 2));
      return { results };
    }
    case 'import':
      throw new Error('unreachable: imports are checked, not run');
  }
}

/** Where a rejectionSample stage writes its preference pairs, beside its SFT records. */
function pairsPath(records: string): string {
  return join(dirname(records), 'pairs.jsonl');
}

function evalBrief(r: EvalResult) {
  return {
    pass1: r.pass1,
    consAtK: r.consAtK,
    k: r.samplesPerQuestion,
    formatRate: r.formatRate,
    meanLength: r.meanLength,
    /** null when no completion's chain of thought has words (pure arithmetic). */
    languageConsistency: r.languageConsistency,
    languageScored: r.languageScored,
    /** Share of right arithmetic steps in the chains of thought; null when none is written. */
    stepAccuracy: r.stepAccuracy,
  };
}
