import { existsSync } from 'node:fs';
import type { Prompt } from '../../schemas/index.ts';
import { checkSteps } from '../eval/steps.ts';
import { summarizeEval, type EvalSummary, type QuestionSamples } from '../eval/passAtK.ts';
import { formatReward, languageConsistencyReward, type Language } from '../rewards/rewards.ts';
import type { BackendRequest } from '../policy/backend.ts';
import { isCheckpoint, readCheckpoint } from '../policy/checkpoint.ts';
import { CharTokenizer, tokenizerFromSpec } from '../policy/tokenizer.ts';
import type { Topology } from '../topology/topology.ts';
import { taskRuntime, type TaskRuntime } from './taskRuntime.ts';
import type { GeneratorReply, GeneratorRequest } from './workers/protocol.ts';
import { WorkerClient } from './workers/rpc.ts';
import type { WeightArrays } from './workers/weights.ts';

export interface EvalSettings {
  prompts: number;
  k: number;
  temperature: number;
  topP: number;
  maxNewTokens: number;
  /** The target language of the language-consistency score (default 'en'). */
  language?: Language;
}

export interface EvalResult extends EvalSummary {
  /** Share of samples in the <think>/<answer> format. */
  formatRate: number;
  meanLength: number;
  /**
   * DeepSeek-R1's language consistency (languageConsistencyReward, the target language of the settings):
   * the mean over the samples whose chain of thought has words of the share of them in the target
   * language; null when no sample has a word to score (a chain of thought of digits only).
   */
  languageConsistency: number | null;
  /** Share of samples the language-consistency score applies to (their chain of thought has words). */
  languageScored: number;
  /**
   * Share of the arithmetic steps written in the chains of thought ("7*10=70") that are right
   * (checkSteps); null when no sample writes one.
   */
  stepAccuracy: number | null;
}

/**
 * The R1 evaluation protocol on held-out prompts: k samples per question at temperature 0.6 and
 * top-p 0.95 (by default), pass@1 averaged over the samples, unbiased pass@k, cons@k.
 */
export async function evaluate(
  generator: WorkerClient<GeneratorRequest, GeneratorReply>,
  runtime: TaskRuntime,
  settings: EvalSettings,
  seed: number,
): Promise<EvalResult> {
  const examples = runtime.test.slice(0, settings.prompts);
  const prompts: Prompt[] = examples.map((e) => runtime.prompt(e, '@eval'));
  const reply = await generator.request<Extract<GeneratorReply, { type: 'rollouts' }>>({
    type: 'generate',
    prompts,
    groupSize: settings.k,
    sampling: {
      temperature: settings.temperature,
      topP: settings.topP,
      topK: 0,
      maxNewTokens: settings.maxNewTokens,
    },
    seed,
  });
  const signal = new AbortController().signal;
  const questions: QuestionSamples[] = prompts.map(() => ({ answers: [], correct: [] }));
  let formatted = 0;
  let length = 0;
  const format = formatReward();
  const language = languageConsistencyReward(settings.language ?? 'en');
  let languageSum = 0;
  let languageScored = 0;
  let steps = 0;
  let rightSteps = 0;
  for (const [i, r] of reply.rollouts.entries()) {
    const q = questions[Math.floor(i / settings.k)]!;
    const input = {
      prompt: r.prompt,
      completion: r.completion,
      completionTokens: r.completionTokenIds.length,
      finishReason: r.finishReason,
    };
    const score = await runtime.correctness.score(input, signal);
    q.correct.push(score === 1);
    q.answers.push(runtime.voteKey(r.completion));
    if (format.score(input, signal) === 1) formatted++;
    const consistency = await language.score(input, signal);
    if (consistency !== null) {
      languageSum += consistency;
      languageScored++;
    }
    length += r.completionTokenIds.length;
    const checked = checkSteps(r.completion);
    steps += checked.steps;
    rightSteps += checked.right;
  }
  // pass@k for k = 1, 2, 4, ... up to the samples per question, and k itself.
  const ks = [1];
  while (ks[ks.length - 1]! * 2 <= settings.k) ks.push(ks[ks.length - 1]! * 2);
  if (!ks.includes(settings.k)) ks.push(settings.k);
  return {
    ...summarizeEval(questions, ks),
    formatRate: formatted / reply.rollouts.length,
    meanLength: length / reply.rollouts.length,
    languageConsistency: languageScored > 0 ? languageSum / languageScored : null,
    languageScored: languageScored / reply.rollouts.length,
    stepAccuracy: steps > 0 ? rightSteps / steps : null,
  };
}

export interface CheckpointEvalOptions {
  topology: Topology;
  backend: BackendRequest;
  /** A checkpoint directory (a run's checkpoint/ or a cached base model). */
  checkpoint: string;
  settings: EvalSettings;
  seed: number;
}

/** A generator worker holding a checkpoint's weights, for evaluation and rejection sampling. */
export interface CheckpointGenerator {
  generator: WorkerClient<GeneratorRequest, GeneratorReply>;
  backend: string;
  policyVersion: number;
  close(): Promise<void>;
}

/** Starts a generator on a checkpoint whose tokenizer must be the task's; errors name the directory. */
export async function openCheckpointGenerator(
  checkpoint: string,
  runtime: TaskRuntime,
  backend: BackendRequest,
  what = 'eval',
): Promise<CheckpointGenerator> {
  if (!isCheckpoint(checkpoint)) {
    throw new Error(
      existsSync(checkpoint)
        ? `${what}: ${checkpoint} is not a checkpoint directory (no manifest.json in it)`
        : `${what}: no checkpoint at ${checkpoint} (no such directory)`,
    );
  }
  // Read as arrays: the generator worker builds the model on its backend; this thread starts none.
  const { manifest, model: params } = await readCheckpoint(checkpoint);
  const tokenizer = new CharTokenizer(runtime.alphabet);
  if (JSON.stringify(tokenizerFromSpec(manifest.tokenizer).spec()) !== JSON.stringify(tokenizer.spec())) {
    throw new Error(
      `${what}: the tokenizer of ${checkpoint} differs from the one the ${runtime.name} task uses`,
    );
  }
  const weights: WeightArrays = Object.fromEntries(params);
  const model = manifest.model;
  const { policyVersion } = manifest;
  const generator = new WorkerClient<GeneratorRequest, GeneratorReply>(
    'generator',
    new URL('./workers/generator.worker.ts', import.meta.url),
  );
  try {
    const ready = await generator.request<Extract<GeneratorReply, { type: 'ready' }>>({
      type: 'init',
      backend,
      model,
      tokenizer: tokenizer.spec(),
      version: policyVersion,
      weights,
    });
    return {
      generator,
      backend: ready.backend,
      policyVersion,
      close: () => generator.close(),
    };
  } catch (error) {
    await generator.close();
    // The worker's error (a model config that does not fit the weights, say) names no directory.
    throw new Error(`${what}: ${checkpoint}: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Refuses an evaluation of more prompts than the held-out set has (a jsonl test file shorter than
 * data.testPrompts), rather than evaluating on fewer than asked.
 */
export function checkHeldOut(name: string, runtime: TaskRuntime, prompts: number): void {
  if (prompts > runtime.test.length)
    throw new Error(
      `eval: asked for ${prompts} prompts but the held-out set of ${name} has ${runtime.test.length}`,
    );
}

/** `rxrl eval`: the R1 protocol on the held-out prompts of a topology's task, for one checkpoint. */
export async function evaluateCheckpoint(
  options: CheckpointEvalOptions,
): Promise<EvalResult & { backend: string; policyVersion: number }> {
  const { topology } = options;
  const runtime = taskRuntime(topology);
  checkHeldOut(topology.name, runtime, options.settings.prompts);
  const opened = await openCheckpointGenerator(options.checkpoint, runtime, options.backend);
  try {
    const result = await evaluate(opened.generator, runtime, options.settings, options.seed);
    return { ...result, backend: opened.backend, policyVersion: opened.policyVersion };
  } finally {
    await opened.close();
  }
}
