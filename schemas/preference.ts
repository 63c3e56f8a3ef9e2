import { z } from 'zod';
import { SchemaVersion } from './common.ts';

/**
 * What `httpPreferenceReward` POSTs to a remote preference scorer (a helpfulness/harmlessness reward
 * model, DeepSeek-R1's second RL stage) for one completion, as `application/json`.
 */
export const PreferenceRequest = z
  .object({
    schemaVersion: SchemaVersion,
    id: z
      .string()
      .min(1)
      .optional()
      .describe('The prompt id (the group id of its rollouts), for the scorer to log or cache by.'),
    prompt: z.string().describe('The prompt as the policy saw it, template applied.'),
    completion: z.string().describe('The completion to score, as generated (reasoning included).'),
  })
  .strict();
export type PreferenceRequest = z.infer<typeof PreferenceRequest>;

/**
 * The scorer's answer. Higher is better; the scale is the scorer's own (a raw reward-model logit, a
 * probability...). Other fields are allowed and ignored.
 */
export const PreferenceResponse = z.looseObject({
  score: z.number().describe('The preference score of the completion: a finite number, higher is better.'),
});
export type PreferenceResponse = z.infer<typeof PreferenceResponse>;

/** One line of a preference data set (JSONL): a prompt and two completions, the preferred one first. */
export const PreferencePair = z
  .object({
    id: z.string().min(1).optional().describe('An id of the pair, for error messages and splits.'),
    prompt: z.string().describe('The prompt both completions answer.'),
    chosen: z.string().describe('The preferred completion.'),
    rejected: z.string().describe('The other completion.'),
  })
  .strict();
export type PreferencePair = z.infer<typeof PreferencePair>;
