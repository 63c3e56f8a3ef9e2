import type { Rollout } from '../../schemas/index.ts';
import { formatReward, languageConsistencyReward, type Language } from '../rewards/rewards.ts';
import type { TaskRuntime } from '../run/taskRuntime.ts';
import type { GeneratorReply, GeneratorRequest } from '../run/workers/protocol.ts';
import type { WorkerClient } from '../run/workers/rpc.ts';
import type { PreferencePair } from '../../schemas/index.ts';
import type { SftRecord } from './records.ts';

/** Why a sample was not kept, in the order they are checked: a sample counts once, under its first reason. */
export const REJECTION_REASONS = [
  'truncated',
  'format',
  'incorrect',
  'language',
  'repetition',
  'duplicate',
  'over_quota',
] as const;
export type RejectionReason = (typeof REJECTION_REASONS)[number];

export interface RejectionRules {
  language?: Language;
  minLanguageConsistency: number;
  maxRepeats: number;
}

/** The most times one step of the chain of thought occurs (steps split on commas, semicolons, new lines). */
export function maxStepRepeats(completion: string): number {
  const think = /<think>([\s\S]*?)(?:<\/think>|$)/.exec(completion)?.[1] ?? completion;
  const counts = new Map<string, number>();
  let most = 0;
  for (const raw of think.split(/[,;\n]|\.\s/)) {
    const step = raw.trim();
    if (step === '') continue;
    const n = (counts.get(step) ?? 0) + 1;
    counts.set(step, n);
    most = Math.max(most, n);
  }
  return most;
}

/**
 * Whether a sample is fit to learn from (DeepSeek-R1 §2.3.3: correct, readable, not mixed-language, no
 * endless repetition): the first reason it is not, or null when it is.
 */
export async function judgeSample(
  sample: Pick<Rollout, 'prompt' | 'completion' | 'finishReason' | 'completionTokenIds'>,
  runtime: TaskRuntime,
  rules: RejectionRules,
  signal: AbortSignal = new AbortController().signal,
): Promise<Exclude<RejectionReason, 'duplicate' | 'over_quota'> | null> {
  const input = {
    prompt: sample.prompt,
    completion: sample.completion,
    completionTokens: sample.completionTokenIds.length,
    finishReason: sample.finishReason,
  };
  if (sample.finishReason !== 'eos') return 'truncated';
  if (formatReward().score(input, signal) !== 1) return 'format';
  if ((await runtime.correctness.score(input, signal)) !== 1) return 'incorrect';
  if (rules.language) {
    const consistency = await languageConsistencyReward(rules.language).score(input, signal);
    // No words at all (a chain of digits) mixes no languages.
    if (consistency !== null && consistency < rules.minLanguageConsistency) return 'language';
  }
  if (maxStepRepeats(sample.completion) > rules.maxRepeats) return 'repetition';
  return null;
}

export interface RejectionResult {
  records: SftRecord[];
  /** For each prompt with an accepted and a rejected sample: the first of each (a reward model's data). */
  pairs: PreferencePair[];
  generated: number;
  kept: number;
  rejected: Record<RejectionReason, number>;
  /** Prompts with at least one kept sample. */
  promptsCovered: number;
}

/**
 * Rejection sampling: k completions per prompt from the generator's policy, judged by {@link judgeSample};
 * at most `keepPerPrompt` distinct accepted completions per prompt become SFT records. Every generated
 * sample is counted once: generated = kept + the sum of rejected.
 */
export async function rejectionSample(options: {
  generator: WorkerClient<GeneratorRequest, GeneratorReply>;
  runtime: TaskRuntime;
  prompts: number;
  k: number;
  keepPerPrompt: number;
  temperature: number;
  maxNewTokens: number;
  rules: RejectionRules;
  seed: number;
  source: string;
  /** Prompts per generation request. */
  chunk?: number;
  onProgress?: (done: number, total: number) => void;
}): Promise<RejectionResult> {
  const { runtime, k } = options;
  if (options.prompts > runtime.train.length) {
    throw new Error(
      `rejectionSample: asked for ${options.prompts} prompts but the training split has ${runtime.train.length}`,
    );
  }
  const examples = runtime.train.slice(0, options.prompts);
  const rejected = Object.fromEntries(REJECTION_REASONS.map((r) => [r, 0])) as Record<
    RejectionReason,
    number
  >;
  const records: SftRecord[] = [];
  const pairs: PreferencePair[] = [];
  let generated = 0;
  let promptsCovered = 0;
  const chunk = options.chunk ?? 32;
  for (let start = 0; start < examples.length; start += chunk) {
    const batch = examples.slice(start, start + chunk);
    const reply = await options.generator.request<Extract<GeneratorReply, { type: 'rollouts' }>>({
      type: 'generate',
      prompts: batch.map((e) => runtime.prompt(e, '@rs')),
      groupSize: k,
      sampling: { temperature: options.temperature, topP: 1, topK: 0, maxNewTokens: options.maxNewTokens },
      seed: options.seed + start,
    });
    generated += reply.rollouts.length;
    for (const [i, example] of batch.entries()) {
      const kept = new Set<string>();
      let worse: string | undefined;
      for (const sample of reply.rollouts.slice(i * k, (i + 1) * k)) {
        const reason = await judgeSample(sample, runtime, options.rules);
        if (reason) {
          rejected[reason]++;
          worse ??= sample.completion;
        } else if (kept.has(sample.completion)) rejected.duplicate++;
        else if (kept.size >= options.keepPerPrompt) rejected.over_quota++;
        else {
          kept.add(sample.completion);
          records.push({
            prompt: runtime.prompt(example).text,
            completion: sample.completion,
            source: options.source,
            id: example.id,
          });
        }
      }
      if (kept.size > 0) promptsCovered++;
      const [best] = kept;
      if (best !== undefined && worse !== undefined)
        pairs.push({ id: example.id, prompt: runtime.prompt(example).text, chosen: best, rejected: worse });
    }
    options.onProgress?.(Math.min(start + chunk, examples.length), examples.length);
  }
  return { records, pairs, generated, kept: records.length, rejected, promptsCovered };
}
