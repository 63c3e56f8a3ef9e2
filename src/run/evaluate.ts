import type { Prompt } from '../../schemas/index.ts';
import { summarizeEval, type EvalSummary, type QuestionSamples } from '../eval/passAtK.ts';
import { formatReward } from '../rewards/rewards.ts';
import type { TaskRuntime } from './taskRuntime.ts';
import type { GeneratorReply, GeneratorRequest } from './workers/protocol.ts';
import type { WorkerClient } from './workers/rpc.ts';

export interface EvalSettings {
  prompts: number;
  k: number;
  temperature: number;
  topP: number;
  maxNewTokens: number;
}

export interface EvalResult extends EvalSummary {
  /** Share of samples in the <think>/<answer> format. */
  formatRate: number;
  meanLength: number;
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
    length += r.completionTokenIds.length;
  }
  const ks = [1, settings.k].filter((k, i, a) => a.indexOf(k) === i);
  return {
    ...summarizeEval(questions, ks),
    formatRate: formatted / reply.rollouts.length,
    meanLength: length / reply.rollouts.length,
  };
}
