import { z } from 'zod';

/**
 * A topology declares a run as data (Kafka Streams / Beam style): the task, the policy, the rewards,
 * the GRPO settings and the run's limits. It is validated, printed by `rxrl describe`, then run.
 */

const TaskSpec = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('arithmetic'),
      digits: z.int().min(1).max(6),
      operations: z.array(z.enum(['+', '*'])).min(1),
    })
    .strict(),
  z
    .object({
      kind: z.literal('countdown'),
      numbers: z.union([z.literal(3), z.literal(4)]),
      maxNumber: z.int().min(2),
    })
    .strict(),
  z.object({ kind: z.literal('jsonl'), train: z.string(), test: z.string() }).strict(),
  z
    .object({ kind: z.literal('code') })
    .strict()
    .describe('Small stdin/stdout JavaScript programs (src/tasks/code.ts), scored by running their tests.'),
]);

const RewardSpec = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('accuracy'), weight: z.number().default(1) }).strict(),
  z.object({ kind: z.literal('format'), weight: z.number().default(1) }).strict(),
  z.object({ kind: z.literal('countdown'), weight: z.number().default(1) }).strict(),
  z
    .object({
      kind: z.literal('code'),
      weight: z.number().default(1),
      timeoutMs: z.int().positive().optional().describe('Wall-clock limit per test run (sandbox default).'),
      memoryMb: z.int().positive().optional(),
    })
    .strict(),
  z
    .object({
      kind: z.literal('language_consistency'),
      language: z.enum(['en', 'zh']),
      weight: z.number().default(1),
    })
    .strict(),
  z
    .object({
      kind: z.literal('preference'),
      url: z
        .url()
        .describe('A scorer speaking the PreferenceRequest/PreferenceResponse contract (schemas/).'),
      timeoutMs: z.int().positive().optional(),
      retries: z.int().nonnegative().optional(),
      weight: z.number().default(1),
    })
    .strict(),
  z
    .object({
      kind: z.literal('preference_model'),
      path: z
        .string()
        .min(1)
        .describe("A preference model saved by rxrl (in a recipe: a rewardModel stage's name)."),
      weight: z.number().default(1),
    })
    .strict(),
  z
    .object({
      kind: z.literal('module'),
      path: z
        .string()
        .min(1)
        .describe(
          "A module of your own (TRL's reward_funcs): its export is a function of a RewardInput, or a RewardFunction (src/rewards/module.ts). Resolved against the working directory.",
        ),
      export: z.string().min(1).optional().describe('The export to use (default: default).'),
      name: z
        .string()
        .min(1)
        .optional()
        .describe("The reward's name in metrics (default: the file's name without its extension)."),
      weight: z.number().default(1),
    })
    .strict(),
  z
    .object({
      kind: z.literal('overlong'),
      maxLength: z.int().positive(),
      buffer: z.int().positive(),
      weight: z.number().default(1),
    })
    .strict(),
]);

export const Topology = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, 'lowercase letters, digits and dashes'),
    description: z.string(),
    seed: z.int(),
    task: TaskSpec,
    template: z.string().includes('{prompt}'),
    data: z.object({ trainPrompts: z.int().positive(), testPrompts: z.int().positive() }).strict(),
    model: z
      .object({
        contextLength: z.int().positive(),
        dModel: z.int().positive(),
        nLayers: z.int().positive(),
        nHeads: z.int().positive(),
        positionEncoding: z
          .enum(['learned', 'rope'])
          .optional()
          .describe("'learned' position embeddings (GPT-2, the default) or 'rope' (rotary, relative)."),
      })
      .strict(),
    pretrain: z
      .object({
        steps: z.int().nonnegative(),
        batchSize: z.int().positive(),
        learningRate: z.number().positive(),
        columnAccuracy: z
          .number()
          .min(0)
          .max(1)
          .optional()
          .describe(
            'Arithmetic corpus: probability that each column of a written sum is right (default 0.5).',
          ),
        solveRate: z
          .number()
          .min(0)
          .max(1)
          .optional()
          .describe('Countdown corpus: probability that a document reaches the target (default 0.3).'),
        brokenFormat: z.number().min(0).max(1),
        attempts: z
          .int()
          .positive()
          .optional()
          .describe(
            'Countdown corpus: most attempts a document makes before it answers (default 1). Each makes 1 to ' +
              'this many, written apart by a space, stops at one that reaches the target and answers with its last.',
          ),
        drill: z
          .number()
          .min(0)
          .max(1)
          .optional()
          .describe(
            'Countdown corpus: share of pretraining rows that are arithmetic drill (a question, then the steps ' +
              'of one random attempt after another at its numbers, "7*10=70,70/2=35,10-2=8,...") instead of ' +
              'task documents (default 0).',
          ),
        reasoningLanguages: z
          .object({ en: z.number().min(0).optional(), zh: z.number().min(0).optional() })
          .strict()
          .refine((w) => (w.en ?? 0) + (w.zh ?? 0) > 0, 'give at least one language a positive weight')
          .optional()
          .describe(
            'Arithmetic (addition) corpus: word each step of the working ("7+8=15 carry 1", "7+8=15 进1"), ' +
              "each step's language drawn by these mixing weights (R1-Zero's language mixing). " +
              'Absent: digits only ("7+8=15"). Its characters join the tokenizer\'s alphabet.',
          ),
      })
      .strict(),
    rewards: z.array(RewardSpec).min(1),
    grpo: z
      .object({
        groupSize: z
          .int()
          .min(2, 'a group needs at least 2 samples: GRPO compares each with the rest of its group'),
        promptsPerStep: z.int().positive(),
        estimator: z.enum(['grpo', 'dr_grpo', 'rloo', 'reinforce_pp_baseline']),
        scaleRewards: z
          .enum(['group', 'batch', 'none'])
          .optional()
          .describe(
            "Which std divides the advantages (TRL's scale_rewards): by default group for grpo, batch (the step's groups) for reinforce_pp_baseline, none for dr_grpo and rloo.",
          ),
        dynamicSampling: z.boolean(),
        maxGenerationRounds: z
          .int()
          .positive()
          .default(16)
          .describe('With dynamic sampling: most rounds of generation (P prompts each) per batch.'),
        lossAggregation: z.enum(['grpo', 'bnpo', 'dr_grpo', 'dapo']),
        importanceSampling: z.enum(['token', 'sequence']),
        epsLow: z.number().nonnegative(),
        epsHigh: z.number().nonnegative(),
        dualClip: z
          .number()
          .gt(1)
          .optional()
          .describe(
            "Dual-clip constant c (verl's clip_ratio_c, typically 3): bounds the loss of negative-advantage tokens.",
          ),
        beta: z.number().nonnegative(),
        klEstimator: z.enum(['k1', 'k2', 'k3']),
        learningRate: z.number().positive(),
        warmupSteps: z.int().nonnegative(),
        maxGradNorm: z.number().nonnegative(),
        epochs: z
          .int()
          .positive()
          .describe("Passes over each batch (TRL's num_iterations, PPO's epochs, mu)."),
        minibatches: z
          .int()
          .positive()
          .default(1)
          .describe(
            'Optimiser steps per pass, each on a slice of the batch. A batch makes one policy version, however many steps it takes.',
          ),
        maskTruncated: z
          .boolean()
          .default(false)
          .describe(
            "DAPO's overlong filtering (TRL's mask_truncated_completions): completions cut off at maxNewTokens carry no loss.",
          ),
        referenceRefreshEvery: z
          .int()
          .nonnegative()
          .describe('Copy the policy into the KL reference every this many optimiser steps (0: never).'),
        eta: z.int().nonnegative().describe('Bounded staleness: 0 is synchronous.'),
        groupTimeoutMs: z.int().positive(),
      })
      .strict(),
    sampling: z
      .object({
        temperature: z.number().positive(),
        topP: z.number().gt(0).max(1),
        topK: z.int().nonnegative(),
        maxNewTokens: z.int().positive(),
      })
      .strict(),
    eval: z
      .object({
        every: z.int().nonnegative().describe('Evaluate every this many steps (0: only at start and end).'),
        prompts: z.int().positive(),
        k: z.int().positive(),
        temperature: z.number().positive(),
        topP: z.number().gt(0).max(1),
      })
      .strict(),
    run: z
      .object({
        steps: z.int().positive(),
        checkpointEvery: z
          .int()
          .nonnegative()
          .describe('Save a checkpoint every this many steps; the last step is always saved (0: only it).'),
      })
      .strict(),
  })
  .strict();
export type Topology = z.infer<typeof Topology>;
export type TopologyInput = z.input<typeof Topology>;

/** TRL's (GRPOConfig) and verl's names for topology fields, for users who write those by habit. */
export const TRL_NAMES: Readonly<Record<string, string>> = {
  num_generations: 'grpo.groupSize',
  generation_batch_size: 'grpo.groupSize x grpo.promptsPerStep',
  ppo_mini_batch_size: 'grpo.minibatches (promptsPerStep divided by it: verl counts prompts)',
  epsilon: 'grpo.epsLow (and grpo.epsHigh, which TRL sets to it too)',
  epsilon_high: 'grpo.epsHigh',
  clip_ratio: 'grpo.epsLow and grpo.epsHigh (verl sets both to it)',
  train_batch_size: 'grpo.promptsPerStep (verl counts prompts)',
  clip_ratio_low: 'grpo.epsLow',
  clip_ratio_high: 'grpo.epsHigh',
  clip_ratio_c: 'grpo.dualClip',
  loss_type: 'grpo.lossAggregation',
  loss_agg_mode: 'grpo.lossAggregation',
  scale_rewards: 'grpo.scaleRewards',
  norm_adv_by_std_in_grpo: 'grpo.scaleRewards',
  adv_estimator: 'grpo.estimator',
  kl_loss_coef: 'grpo.beta',
  kl_loss_type: 'grpo.klEstimator',
  num_iterations: 'grpo.epochs',
  ppo_epochs: 'grpo.epochs',
  importance_sampling_level: 'grpo.importanceSampling',
  sync_ref_model: 'grpo.referenceRefreshEvery',
  ref_model_sync_steps: 'grpo.referenceRefreshEvery',
  mask_truncated_completions: 'grpo.maskTruncated',
  learning_rate: 'grpo.learningRate',
  warmup_steps: 'grpo.warmupSteps',
  max_grad_norm: 'grpo.maxGradNorm',
  filter_groups: 'grpo.dynamicSampling',
  max_completion_length: 'sampling.maxNewTokens',
  max_new_tokens: 'sampling.maxNewTokens',
  top_p: 'sampling.topP',
  top_k: 'sampling.topK',
  reward_funcs: 'rewards',
  reward_weights: 'rewards[].weight',
  max_steps: 'run.steps',
  save_steps: 'run.checkpointEvery',
  eval_steps: 'eval.every',
};

/** Where a name means a field of the section it is written in, not TRL_NAMES' (top_p in eval is eval.topP). */
const TRL_NAMES_IN: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  eval: {
    top_p: 'eval.topP',
    num_generations: 'eval.k',
    eval_steps: 'eval.every',
  },
  pretrain: {
    learning_rate: 'pretrain.learningRate',
    max_steps: 'pretrain.steps',
    per_device_train_batch_size: 'pretrain.batchSize',
  },
};

/**
 * For each unknown key of a failed validation that is TRL's or verl's name for a field, a line saying
 * rxrl's (`grpo.num_generations: TRL's num_generations is grpo.groupSize here`), for the section it was
 * written in (`eval.top_p` is eval.topP, not sampling.topP).
 */
export function trlNameHints(error: z.ZodError): string[] {
  return error.issues.flatMap((issue) => {
    if (issue.code !== 'unrecognized_keys') return [];
    const section = TRL_NAMES_IN[String(issue.path[0])] ?? {};
    return issue.keys.flatMap((key) => {
      const field = Object.hasOwn(section, key)
        ? section[key]
        : Object.hasOwn(TRL_NAMES, key)
          ? TRL_NAMES[key]
          : undefined;
      if (field === undefined) return [];
      const at = [...issue.path, key]
        .map((part, i) => (typeof part === 'number' ? `[${part}]` : `${i > 0 ? '.' : ''}${String(part)}`))
        .join('');
      return [`${at}: TRL's or verl's ${key} is ${field} here`];
    });
  });
}

/** Validate a topology declaration; the error names every field at fault. */
export function defineTopology(t: TopologyInput): Topology {
  const parsed = Topology.safeParse(t);
  if (!parsed.success) {
    const hints = trlNameHints(parsed.error).map((line) => `\n→ ${line}`);
    throw new Error(
      `Topology "${(t as { name?: string }).name ?? '?'}" is invalid:\n${z.prettifyError(parsed.error)}${hints.join('')}`,
    );
  }
  return checkTopology(parsed.data);
}

/**
 * The checks across a parsed topology's fields that its schema cannot make (heads dividing the width,
 * minibatches dividing the batch, settings that fit together); the topology, or an error naming them.
 */
export function checkTopology(topo: Topology): Topology {
  if (topo.model.dModel % topo.model.nHeads !== 0)
    throw new Error('Topology: model.dModel must be a multiple of model.nHeads');
  const batch = topo.grpo.groupSize * topo.grpo.promptsPerStep;
  if (batch % topo.grpo.minibatches !== 0)
    throw new Error(
      `Topology: grpo.minibatches (${topo.grpo.minibatches}) must divide the batch of groupSize x promptsPerStep = ${batch} samples`,
    );
  const { task } = topo;
  if (
    topo.pretrain.reasoningLanguages &&
    !(task.kind === 'arithmetic' && task.operations.length === 1 && task.operations[0] === '+')
  )
    throw new Error(
      'Topology: pretrain.reasoningLanguages words the addition corpus; it needs task { kind: "arithmetic", operations: ["+"] }',
    );
  if ((topo.pretrain.drill ?? 0) > 0 && task.kind !== 'countdown')
    throw new Error(
      `Topology: pretrain.drill mixes Countdown arithmetic into the corpus; it needs task { kind: "countdown" }, not "${task.kind}"`,
    );
  if ((topo.pretrain.attempts ?? 1) > 1 && task.kind !== 'countdown')
    throw new Error(
      `Topology: pretrain.attempts writes several Countdown attempts per document; it needs task { kind: "countdown" }, not "${task.kind}"`,
    );
  if (topo.eval.prompts > topo.data.testPrompts)
    throw new Error(
      `Topology: eval.prompts (${topo.eval.prompts}) is more than the held-out set has, data.testPrompts (${topo.data.testPrompts})`,
    );
  if (topo.sampling.maxNewTokens >= topo.model.contextLength)
    throw new Error(
      `Topology: sampling.maxNewTokens (${topo.sampling.maxNewTokens}) leaves no room for a prompt in the model's context, model.contextLength = ${topo.model.contextLength}`,
    );
  if (topo.grpo.epsLow >= 1)
    throw new Error(
      `Topology: grpo.epsLow (${topo.grpo.epsLow}) must be below 1: the ratio's lower clip bound is 1 - epsLow`,
    );
  for (const [i, reward] of topo.rewards.entries()) {
    if (reward.kind !== 'overlong') continue;
    if (reward.buffer > reward.maxLength)
      throw new Error(
        `Topology: rewards[${i}] (overlong): buffer (${reward.buffer}) is longer than maxLength (${reward.maxLength})`,
      );
    if (reward.maxLength - reward.buffer >= topo.sampling.maxNewTokens)
      throw new Error(
        `Topology: rewards[${i}] (overlong): it penalises from maxLength - buffer = ${reward.maxLength - reward.buffer} tokens on, and no completion is longer than sampling.maxNewTokens (${topo.sampling.maxNewTokens}): it would never apply`,
      );
  }
  return topo;
}
