import { writeFileSync } from 'node:fs';
import {
  SCHEMA_VERSION,
  type AdvantagedSample,
  type Group,
  type Prompt,
  type ScoredRollout,
} from '../schemas/index.ts';

export function prompt(id: string, text = `question ${id}`): Prompt {
  return { schemaVersion: SCHEMA_VERSION, id, task: 'arithmetic', text, answer: '4' };
}

/** A scored rollout of group `groupId` with a given total reward and sizes. */
export function scored(
  groupId: string,
  index: number,
  reward: number | null,
  options: { groupSize?: number; version?: number; promptLength?: number; completionLength?: number } = {},
): ScoredRollout {
  const completionLength = options.completionLength ?? 3;
  return {
    schemaVersion: SCHEMA_VERSION,
    id: `${groupId}/${index}`,
    groupId,
    index,
    groupSize: options.groupSize ?? 2,
    prompt: prompt(groupId),
    promptTokenIds: Array.from({ length: options.promptLength ?? 2 }, (_, i) => i + 1),
    completionTokenIds: Array.from({ length: completionLength }, (_, i) => i + 5),
    completion: 'x'.repeat(completionLength),
    behaviourLogProbs: Array.from({ length: completionLength }, () => -0.5),
    policyVersion: options.version ?? 0,
    finishReason: 'eos',
    rewards: { accuracy: reward },
    reward,
  };
}

export function groupOf(groupId: string, rewards: (number | null)[], version = 0): Group {
  return {
    schemaVersion: SCHEMA_VERSION,
    groupId,
    samples: rewards.map((r, i) => scored(groupId, i, r, { groupSize: rewards.length, version })),
  };
}

export function advantaged(
  groupId: string,
  index: number,
  advantage: number,
  options: Parameters<typeof scored>[3] = {},
): AdvantagedSample {
  return { ...scored(groupId, index, 1, options), advantage };
}

/**
 * Writes a reward module (TRL's reward_funcs) scoring 0, whose every `every`-th score waits `ms` first:
 * for runs in which some groups time out and their last sample comes late. Returns its path.
 */
export function writeSlowReward(path: string, every: number, ms: number): string {
  writeFileSync(
    path,
    'let calls = 0;\n' +
      'export default async (_input: unknown) => {\n' +
      `  if (++calls % ${every} === 0) await new Promise((resolve) => setTimeout(resolve, ${ms}));\n` +
      '  return 0;\n' +
      '};\n',
  );
  return path;
}
