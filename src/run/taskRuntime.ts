import type { Prompt } from '../../schemas/index.ts';
import { checkRewardNames, type WeightedReward } from '../operators/scoreRollouts.ts';
import { extractAnswer, parseNumber } from '../rewards/answer.ts';
import {
  accuracyReward,
  countdownReward,
  formatReward,
  languageConsistencyReward,
  overlongPenalty,
  parseCountdownAnswer,
  type CountdownAnswer,
  type RewardFunction,
} from '../rewards/rewards.ts';
import { codeReward } from '../rewards/code.ts';
import { moduleReward } from '../rewards/module.ts';
import { httpPreferenceReward } from '../rewards/preference.ts';
import { loadPreferenceModel, type PreferenceModel } from '../rewards/preferenceModel.ts';
import { arithmeticExamples } from '../tasks/arithmetic.ts';
import { codeExamples } from '../tasks/code.ts';
import {
  countdownDrill,
  noisyAdditionCompletion,
  noisyCountdownCompletion,
  reasoningAlphabet,
} from '../tasks/corpus.ts';
import { countdownExamples } from '../tasks/countdown.ts';
import { heldOutOverlap, loadJsonlExamples } from '../tasks/jsonl.ts';
import { toPrompt, type TaskExample } from '../tasks/task.ts';
import type { Topology } from '../topology/topology.ts';

/** What a run needs of its task: data, prompts, rewards, the verifier and the pretraining corpus. */
export interface TaskRuntime {
  name: string;
  train: TaskExample[];
  test: TaskExample[];
  rewards: WeightedReward[];
  /** The reward that decides correctness for pass@k / cons@k. */
  correctness: RewardFunction;
  prompt(example: TaskExample, idSuffix?: string): Prompt;
  /** Characters the tokenizer must cover. */
  alphabet: string;
  /** A noisy pretraining document (the completion text) for an example, or undefined if the task has none. */
  corpusCompletion?: (example: TaskExample, rand: () => number) => string;
  /** Arithmetic drill on an example's numbers (text after the prompt, at most maxChars), if the task has one. */
  drillDocument?: (example: TaskExample, rand: () => number, maxChars: number) => string;
  /** The answer normalised for majority voting ("0.50" and "1/2" vote together). */
  voteKey(completion: string): string | null;
}

function rewardFunction(spec: Topology['rewards'][number]): RewardFunction {
  switch (spec.kind) {
    case 'accuracy':
      return accuracyReward();
    case 'format':
      return formatReward();
    case 'countdown':
      return countdownReward();
    case 'code':
      return codeReward({
        ...(spec.timeoutMs !== undefined ? { timeoutMs: spec.timeoutMs } : {}),
        ...(spec.memoryMb !== undefined ? { memoryMb: spec.memoryMb } : {}),
      });
    case 'preference':
      return httpPreferenceReward({
        url: spec.url,
        ...(spec.timeoutMs !== undefined ? { timeoutMs: spec.timeoutMs } : {}),
        ...(spec.retries !== undefined ? { retries: spec.retries } : {}),
      });
    case 'preference_model': {
      // Loaded at the first score, once.
      let model: Promise<PreferenceModel> | undefined;
      return {
        name: 'preference',
        score: async ({ prompt, completion }) =>
          (await (model ??= loadPreferenceModel(spec.path))).score(prompt.text, completion),
      };
    }
    case 'language_consistency':
      return languageConsistencyReward(spec.language);
    case 'overlong':
      return overlongPenalty({ maxLength: spec.maxLength, buffer: spec.buffer });
    case 'module':
      return moduleReward(spec);
  }
}

/**
 * Waits until every reward can score (a module of one's own loaded); rejects with why one cannot, or
 * when two have one name (their metrics and totals would mix).
 */
export async function rewardsReady(rewards: readonly WeightedReward[]): Promise<void> {
  checkRewardNames(rewards);
  await Promise.all(rewards.map(({ fn }) => fn.ready?.()));
}

/** The reward functions a topology names, with their weights (built, not loaded: see rewardsReady). */
export function topologyRewards(topology: Topology): WeightedReward[] {
  return topology.rewards.map((spec) => ({ fn: rewardFunction(spec), weight: spec.weight }));
}

/** The pairs of jsonl files (train, test) whose overlap this process has warned of. */
const overlapWarned = new Set<string>();

export function taskRuntime(topology: Topology): TaskRuntime {
  const { task, seed, data, pretrain } = topology;
  const rewards = topologyRewards(topology);
  let train: TaskExample[];
  let test: TaskExample[];
  let corpusCompletion: TaskRuntime['corpusCompletion'];
  let drillDocument: TaskRuntime['drillDocument'];
  let correctness: RewardFunction;
  // An empty <answer></answer> is no answer: it casts no vote.
  let voteKey: TaskRuntime['voteKey'] = (completion) => {
    const answer = extractAnswer(completion);
    if (answer === null) return null;
    const n = parseNumber(answer);
    return n ? `${n.p}/${n.q}` : answer.replace(/\s+/g, '') || null;
  };
  switch (task.kind) {
    case 'arithmetic': {
      const options = { digits: task.digits, operations: task.operations };
      train = arithmeticExamples('train', data.trainPrompts, seed, options);
      test = arithmeticExamples('test', data.testPrompts, seed, options);
      correctness = accuracyReward();
      if (task.operations.length === 1 && task.operations[0] === '+') {
        const noise = { columnAccuracy: pretrain.columnAccuracy ?? 0.5, brokenFormat: pretrain.brokenFormat };
        const languages = pretrain.reasoningLanguages;
        corpusCompletion = (e, rand) => {
          const [a, b] = e.question.split('+').map(Number);
          return noisyAdditionCompletion(a!, b!, rand, noise, languages);
        };
      }
      break;
    }
    case 'countdown': {
      train = countdownExamples('train', data.trainPrompts, seed, task);
      test = countdownExamples('test', data.testPrompts, seed, task);
      correctness = countdownReward(0);
      // An answer is an expression: (8+5)*3 and 3*(5+8) are one answer, its value from its numbers.
      voteKey = (completion) => {
        const answer = parseCountdownAnswer(completion);
        if (answer === null) return null;
        const expr = answer.expression;
        if (expr === null) return answer.text.replace(/\s+/g, '') || null;
        return `${Number(expr.value.toPrecision(12))} from ${expr.numbers.join(',')}`;
      };
      const noise = {
        solveRate: pretrain.solveRate ?? 0.3,
        brokenFormat: pretrain.brokenFormat,
        ...(pretrain.attempts ? { maxAttempts: pretrain.attempts } : {}),
      };
      corpusCompletion = (e, rand) => {
        const { numbers, target } = e.answer as CountdownAnswer;
        return noisyCountdownCompletion(numbers, target, rand, noise);
      };
      drillDocument = (e, rand, maxChars) =>
        `<think>${countdownDrill((e.answer as CountdownAnswer).numbers, rand, maxChars - '<think>'.length)}`;
      break;
    }
    case 'code':
      train = codeExamples('train', data.trainPrompts, seed);
      test = codeExamples('test', data.testPrompts, seed);
      // Judged under the limits the topology's code reward sets (a program that passes in training
      // passes in evaluation), on the same sandbox as that reward (one bound on programs at once).
      correctness = rewards.find((_, i) => topology.rewards[i]!.kind === 'code')?.fn ?? codeReward();
      break;
    case 'jsonl':
      train = loadJsonlExamples(task.train).slice(0, data.trainPrompts);
      test = loadJsonlExamples(task.test).slice(0, data.testPrompts);
      {
        // Once per pair of files: a recipe builds a runtime per stage and per evaluation.
        const overlap = heldOutOverlap(train, test, task);
        const pair = `${task.train}\0${task.test}`;
        if (overlap && !overlapWarned.has(pair)) {
          overlapWarned.add(pair);
          console.warn(`Warning: ${overlap}`);
        }
      }
      correctness = accuracyReward();
      break;
  }
  const prompt = (e: TaskExample, idSuffix = '') => toPrompt(task.kind, e, topology.template, idSuffix);
  const chars = new Set<string>('0123456789+-*/=,.()[] ');
  for (const e of [...train, ...test]) for (const ch of prompt(e).text) chars.add(ch);
  // Programs are written in any printable character.
  if (task.kind === 'code') for (let c = 32; c < 127; c++) chars.add(String.fromCharCode(c));
  if (task.kind === 'code') chars.add('\n');
  // A worded working (pretrain.reasoningLanguages) writes words: their letters and Han characters.
  if (pretrain.reasoningLanguages)
    for (const ch of reasoningAlphabet(pretrain.reasoningLanguages)) chars.add(ch);
  return {
    name: task.kind,
    train,
    test,
    rewards,
    correctness,
    prompt,
    alphabet: [...chars].sort().join(''),
    ...(corpusCompletion ? { corpusCompletion } : {}),
    ...(drillDocument ? { drillDocument } : {}),
    voteKey,
  };
}
