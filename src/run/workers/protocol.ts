import type { GradientBatch, Prompt, Rollout } from '../../../schemas/index.ts';
import type { LearnerConfig, StepReport } from '../../learner/learner.ts';
import type { BackendRequest } from '../../policy/backend.ts';
import type { GPTConfig } from '../../policy/gpt.ts';
import type { TokenizerSpec } from '../../policy/tokenizer.ts';
import type { WeightArrays } from './weights.ts';

export interface PolicyInit {
  backend: BackendRequest;
  model: GPTConfig;
  tokenizer: TokenizerSpec;
  weights: WeightArrays;
  version: number;
}

export interface SamplingSettings {
  temperature: number;
  topP: number;
  topK: number;
  maxNewTokens: number;
}

export type GeneratorRequest =
  | ({ type: 'init' } & PolicyInit)
  | { type: 'weights'; version: number; weights: WeightArrays }
  | { type: 'generate'; prompts: Prompt[]; groupSize: number; sampling: SamplingSettings; seed: number };

export type GeneratorReply =
  | { type: 'ready'; backend: string }
  | { type: 'ok' }
  | { type: 'rollouts'; rollouts: Rollout[]; tokens: number; seconds: number; version: number };

export type LearnerRequest =
  | ({ type: 'init'; config: LearnerConfig; checkpoint?: string; threads?: number } & PolicyInit)
  | { type: 'train'; batch: GradientBatch }
  | { type: 'save'; dir: string; metadata: Record<string, unknown> };

export type LearnerReply =
  | { type: 'ready'; backend: string; version: number; threads: number }
  | { type: 'trained'; reports: StepReport[]; version: number; weights: WeightArrays }
  | { type: 'saved' };
