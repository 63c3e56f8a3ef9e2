import { AdvantagedSample } from './advantaged-sample.ts';
import { DeadLetter } from './dead-letter.ts';
import { GradientBatch } from './gradient-batch.ts';
import { Group } from './group.ts';
import { Metric } from './metric.ts';
import { PolicyVersion } from './policy-version.ts';
import { PreferencePair, PreferenceRequest, PreferenceResponse } from './preference.ts';
import { Prompt } from './prompt.ts';
import { Rollout } from './rollout.ts';
import { ScoredRollout } from './scored-rollout.ts';

export * from './common.ts';
export * from './prompt.ts';
export * from './rollout.ts';
export * from './scored-rollout.ts';
export * from './group.ts';
export * from './advantaged-sample.ts';
export * from './gradient-batch.ts';
export * from './policy-version.ts';
export * from './metric.ts';
export * from './dead-letter.ts';
export * from './preference.ts';

/** Every message that flows between stages, by name: the names used in errors and JSON Schema files. */
export const messageSchemas = {
  Prompt,
  Rollout,
  ScoredRollout,
  Group,
  AdvantagedSample,
  GradientBatch,
  PolicyVersion,
  Metric,
  DeadLetter,
} as const;
export type MessageName = keyof typeof messageSchemas;

/**
 * Contracts that are not stream messages (HTTP bodies, data-set lines), by name: JSON Schema files
 * are generated for them too, but they have no Kafka topic.
 */
export const contractSchemas = { PreferenceRequest, PreferenceResponse, PreferencePair } as const;
