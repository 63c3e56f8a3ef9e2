import type { FinishReason, Prompt } from '../../schemas/index.ts';
import { extractAnswer, extractReasoning, numericallyEqual } from './answer.ts';
import { evaluateExpression } from './expression.ts';

/** What a reward function sees of one rollout. */
export interface RewardInput {
  prompt: Prompt;
  completion: string;
  completionTokens: number;
  finishReason: FinishReason;
}

/**
 * A named reward. It may be async (a remote scorer): it then receives an AbortSignal that fires at the
 * stage's timeout. null means "does not apply" and is excluded from the advantage statistics.
 */
export interface RewardFunction {
  name: string;
  score(input: RewardInput, signal: AbortSignal): number | null | Promise<number | null>;
  /** Resolves once the reward can score (a module loaded, say); runs await it before they generate. */
  ready?(): Promise<void>;
}

/** 1 when the answer equals the reference as a number (integers, decimals, fractions), else 0. */
export function accuracyReward(): RewardFunction {
  return {
    name: 'accuracy',
    score: ({ prompt, completion }) => {
      const answer = extractAnswer(completion);
      return answer !== null && numericallyEqual(answer, String(prompt.answer)) ? 1 : 0;
    },
  };
}

/** Text holding no <think>, </think>, <answer> or </answer> tag. */
const UNTAGGED = '(?:(?!</?(?:think|answer)>)[\\s\\S])*';
const FORMAT = new RegExp(`^\\s*<think>${UNTAGGED}</think>\\s*<answer>${UNTAGGED}</answer>\\s*$`);

/**
 * 1 for reasoning in <think>...</think> followed by the answer in <answer>...</answer>, and nothing else:
 * one of each, in that order, with no tag inside either (a second <answer>, a <think> nested or repeated,
 * a stray closing tag all score 0).
 */
export function formatReward(): RewardFunction {
  return { name: 'format', score: ({ completion }) => (FORMAT.test(completion) ? 1 : 0) };
}

/** The reference of a Countdown prompt: the numbers to use and the target. */
export interface CountdownAnswer {
  numbers: number[];
  target: number;
}

/**
 * A Countdown completion's answer: the text in <answer> (null if none) and, when it is an expression
 * (anything after an "=" ignored), its value and the numbers it uses, in ascending order.
 */
export function parseCountdownAnswer(
  completion: string,
): { text: string; expression: { value: number; numbers: number[] } | null } | null {
  const text = extractAnswer(completion);
  if (text === null) return null;
  const expr = evaluateExpression(text.replace(/=.*$/, ''));
  return {
    text,
    expression: expr && { value: expr.value, numbers: [...expr.numbers].sort((a, b) => a - b) },
  };
}

/**
 * TinyZero's Countdown score: no parsable answer 0; an expression that is wrong or does not use each
 * given number exactly once 0.1 (the format score); a correct one (|value - target| < 1e-5) 1.
 */
export function countdownReward(formatScore = 0.1): RewardFunction {
  return {
    name: 'countdown',
    score: ({ prompt, completion }) => {
      const { numbers, target } = prompt.answer as CountdownAnswer;
      const expr = parseCountdownAnswer(completion)?.expression;
      if (!expr) return 0;
      const used = expr.numbers;
      const given = [...numbers].sort((a, b) => a - b);
      const exact = used.length === given.length && used.every((n, i) => n === given[i]);
      return exact && Math.abs(expr.value - target) < 1e-5 ? 1 : formatScore;
    },
  };
}

export type Language = 'en' | 'zh';

/**
 * Words of each language in a text, by Unicode script: each Han character counts as a word of
 * Chinese, each run of Latin letters as a word of English. Digits and symbols are neither.
 */
export function countWords(text: string): Record<Language, number> {
  const zh = text.match(/\p{Script=Han}/gu)?.length ?? 0;
  const en = text.match(/\p{Script=Latin}+/gu)?.length ?? 0;
  return { zh, en };
}

/**
 * DeepSeek-R1's language consistency reward: the share of chain-of-thought words in the target language,
 * over every <think> span (extractReasoning: without the tags, the text before the answer). null when the
 * reasoning has no words at all (pure arithmetic).
 */
export function languageConsistencyReward(target: Language): RewardFunction {
  return {
    name: 'language_consistency',
    score: ({ completion }) => {
      const counts = countWords(extractReasoning(completion));
      const total = counts.en + counts.zh;
      return total === 0 ? null : counts[target] / total;
    },
  };
}

/**
 * DAPO's overlong shaping: 0 up to maxLength - buffer tokens, then falling linearly to -factor at
 * maxLength, and -factor beyond it.
 */
export function overlongPenalty(options: {
  maxLength: number;
  buffer: number;
  factor?: number;
}): RewardFunction {
  const { maxLength, buffer, factor = 1 } = options;
  if (!(buffer > 0 && buffer <= maxLength))
    throw new RangeError('overlongPenalty: need 0 < buffer <= maxLength');
  return {
    name: 'overlong',
    score: ({ completionTokens }) =>
      Math.max(-factor, Math.min(((maxLength - buffer - completionTokens) / buffer) * factor, 0)),
  };
}

/** Programming tasks: the fraction of the prompt's test cases the answer's program passes, sandboxed. */
export { codeReward, extractProgram, CodeAnswer, type CodeRewardOptions } from './code.ts';
