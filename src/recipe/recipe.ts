import { z } from 'zod';
import { checkTopology, defineTopology, Topology, type TopologyInput } from '../topology/topology.ts';

/**
 * A recipe is the DeepSeek-R1 pipeline as data: named stages, each reading the named outputs of earlier
 * ones (checkpoints, SFT datasets) and writing its own, so a run can stop and pick up where it left off
 * (a stage whose output exists is skipped unless it is redone) and `rxrl describe` can print the graph.
 *
 *   pretrain ──► sft ◄── coldStart        (cold start)
 *                 └──► grpo ──► rejectionSample ──► sft ──► grpo (+ preference) ──► eval
 */

const StageName = z.string().regex(/^[a-z0-9][a-z0-9-]*$/, 'lowercase letters, digits and dashes');
const RewardSpec = Topology.shape.rewards.element;

const ModelShape = z
  .object({ dModel: z.int().positive(), nLayers: z.int().positive(), nHeads: z.int().positive() })
  .partial()
  .strict();

/** The GRPO settings a stage may change from the recipe's topology. */
const GrpoOverrides = Topology.shape.grpo.partial();

const Pretrain = z
  .object({
    type: z.literal('pretrain'),
    name: StageName,
    model: ModelShape.optional().describe("A different shape than the topology's (a distillation student)."),
    steps: z.int().nonnegative().optional(),
  })
  .strict();

const Import = z
  .object({
    type: z.literal('import'),
    name: StageName,
    checkpoint: z.string().min(1).optional().describe('A checkpoint directory made elsewhere (a teacher).'),
    dataset: z.string().min(1).optional().describe('A JSONL file of {prompt, completion} SFT records.'),
    hint: z.string().optional().describe('What to do when it is missing, printed with the error.'),
  })
  .strict();

const ColdStart = z
  .object({
    type: z.literal('coldStart'),
    name: StageName,
    records: z.int().positive().describe('Correct, readable <think>/<answer> records to write.'),
  })
  .strict();

const Sft = z
  .object({
    type: z.literal('sft'),
    name: StageName,
    from: StageName.describe('The checkpoint to fine-tune.'),
    data: z.array(StageName).min(1).describe('Datasets (coldStart, rejectionSample stages) to train on.'),
    steps: z.int().positive(),
    batchSize: z.int().positive(),
    learningRate: z.number().positive(),
    pack: z
      .boolean()
      .default(false)
      .describe('Pack several records into each row of the context (loss still on completions only).'),
    heldOut: z
      .int()
      .nonnegative()
      .default(32)
      .describe('Records kept out of training to report the loss on.'),
  })
  .strict();

const Grpo = z
  .object({
    type: z.literal('grpo'),
    name: StageName,
    from: StageName,
    steps: z.int().positive(),
    rewards: z
      .array(RewardSpec)
      .min(1)
      .optional()
      .describe("This stage's rewards (default: the topology's)."),
    grpo: GrpoOverrides.optional(),
    evalEvery: z.int().nonnegative().optional(),
  })
  .strict();

const RejectionSample = z
  .object({
    type: z.literal('rejectionSample'),
    name: StageName,
    from: StageName,
    prompts: z.int().positive().describe('Training prompts to sample (from the start of the train split).'),
    k: z.int().positive().describe('Completions per prompt.'),
    keepPerPrompt: z.int().positive().default(1),
    temperature: z.number().positive().default(1),
    language: z.enum(['en', 'zh']).optional().describe('Reject chains of thought that mix languages.'),
    minLanguageConsistency: z.number().min(0).max(1).default(0.9),
    maxRepeats: z
      .int()
      .positive()
      .default(3)
      .describe('Reject a chain of thought in which one step occurs more often than this (a loop).'),
  })
  .strict();

const Distill = z
  .object({
    type: z.literal('distill'),
    name: StageName,
    teacher: StageName,
    student: StageName.describe("The student's starting checkpoint (a smaller pretrain stage)."),
    data: z.array(StageName).min(1).describe("The teacher's accepted traces (rejectionSample stages)."),
    steps: z.int().positive(),
    batchSize: z.int().positive(),
    learningRate: z.number().positive(),
  })
  .strict();

const RewardModel = z
  .object({
    type: z.literal('rewardModel'),
    name: StageName,
    pairs: z
      .array(StageName)
      .min(1)
      .describe(
        'rejectionSample stages (each prompt with an accepted and a rejected sample gives a pair) or imported JSONL files of {prompt, chosen, rejected}.',
      ),
    epochs: z.int().positive().default(10),
    hiddenUnits: z.int().nonnegative().default(32),
    heldOut: z.int().nonnegative().default(32).describe('Pairs kept aside to report pairwise accuracy on.'),
  })
  .strict();

const Eval = z
  .object({
    type: z.literal('eval'),
    name: StageName,
    checkpoints: z.array(StageName).min(1),
    prompts: z.int().positive().optional(),
    k: z.int().positive().optional(),
    language: z
      .enum(['en', 'zh'])
      .optional()
      .describe('Target language of the language-consistency score in the report (default en).'),
  })
  .strict();

export const Stage = z.discriminatedUnion('type', [
  Pretrain,
  Import,
  ColdStart,
  Sft,
  Grpo,
  RejectionSample,
  Distill,
  RewardModel,
  Eval,
]);
export type Stage = z.infer<typeof Stage>;
export type StageOf<T extends Stage['type']> = Extract<Stage, { type: T }>;

export const Recipe = z
  .object({
    kind: z.literal('recipe'),
    name: StageName,
    description: z.string(),
    /** The task, template, model, pretraining, GRPO, sampling and evaluation settings stages start from. */
    topology: Topology,
    stages: z.array(Stage).min(1),
    /**
     * The stage whose checkpoint is the recipe's result, which `rxrl eval <recipe>` evaluates by default
     * (a baseline declared after it, such as pure RL, is not); default: the last stage that makes one.
     */
    final: StageName.optional(),
  })
  .strict();
export type Recipe = z.infer<typeof Recipe>;
export type RecipeInput = Omit<z.input<typeof Recipe>, 'kind' | 'topology'> & { topology: TopologyInput };

/** What a stage leaves behind for later stages. */
export type OutputKind = 'checkpoint' | 'dataset' | 'rewardModel' | 'report';

export function outputKind(stage: Stage): OutputKind {
  switch (stage.type) {
    case 'import':
      return stage.dataset !== undefined ? 'dataset' : 'checkpoint';
    case 'pretrain':
    case 'sft':
    case 'grpo':
    case 'distill':
      return 'checkpoint';
    case 'coldStart':
    case 'rejectionSample':
      return 'dataset';
    case 'rewardModel':
      return 'rewardModel';
    case 'eval':
      return 'report';
  }
}

/**
 * A `preference_model` reward whose path is a bare name (no `/`, no `.`) names a rewardModel stage of the
 * recipe; any other path is a directory on disk.
 */
export function rewardModelStage(reward: Topology['rewards'][number]): string | undefined {
  return reward.kind === 'preference_model' && /^[a-z0-9][a-z0-9-]*$/.test(reward.path)
    ? reward.path
    : undefined;
}

/**
 * The stages a stage reads, with the kind of output each must have. A GRPO stage reads the rewardModel
 * stages its rewards name: its own rewards, or else the topology's (`topologyRewards`).
 */
export function stageInputs(
  stage: Stage,
  topologyRewards: readonly Topology['rewards'][number][],
): { name: string; kind: OutputKind; role: string }[] {
  switch (stage.type) {
    case 'pretrain':
    case 'import':
    case 'coldStart':
      return [];
    case 'sft':
      return [
        { name: stage.from, kind: 'checkpoint', role: 'from' },
        ...stage.data.map((name) => ({ name, kind: 'dataset' as const, role: 'data' })),
      ];
    case 'grpo':
      return [
        { name: stage.from, kind: 'checkpoint', role: 'from' },
        ...(stage.rewards ?? topologyRewards).flatMap((reward) => {
          const name = rewardModelStage(reward);
          return name ? [{ name, kind: 'rewardModel' as const, role: 'reward' }] : [];
        }),
      ];
    case 'rejectionSample':
      return [{ name: stage.from, kind: 'checkpoint', role: 'from' }];
    case 'rewardModel':
      return stage.pairs.map((name) => ({ name, kind: 'dataset' as const, role: 'pairs' }));
    case 'distill':
      return [
        { name: stage.teacher, kind: 'checkpoint', role: 'teacher' },
        { name: stage.student, kind: 'checkpoint', role: 'student' },
        ...stage.data.map((name) => ({ name, kind: 'dataset' as const, role: 'data' })),
      ];
    case 'eval':
      return stage.checkpoints.map((name) => ({ name, kind: 'checkpoint' as const, role: 'checkpoints' }));
  }
}

/** The topology a GRPO stage runs: the recipe's, with the stage's rewards, GRPO settings and steps. */
export function grpoTopology(recipe: Recipe, stage: StageOf<'grpo'>): Topology {
  const t = recipe.topology;
  return defineTopology({
    ...t,
    name: `${recipe.name}-${stage.name}`,
    rewards: stage.rewards ?? t.rewards,
    grpo: { ...t.grpo, ...stage.grpo },
    eval: { ...t.eval, ...(stage.evalEvery !== undefined ? { every: stage.evalEvery } : {}) },
    run: { steps: stage.steps, checkpointEvery: Math.min(t.run.checkpointEvery || stage.steps, stage.steps) },
  });
}

/** The topology a pretrain stage trains its base model with (the student's shape, its own steps). */
export function pretrainTopology(recipe: Recipe, stage: StageOf<'pretrain'>): Topology {
  const t = recipe.topology;
  return defineTopology({
    ...t,
    model: { ...t.model, ...stage.model },
    pretrain: { ...t.pretrain, ...(stage.steps !== undefined ? { steps: stage.steps } : {}) },
  });
}

/**
 * Validates a recipe: the schema, then the graph. Every reference names an earlier stage with the right
 * kind of output, names are unique, and the stages' own topologies are valid; each error says which stage
 * and which field.
 */
export function defineRecipe(input: RecipeInput): Recipe {
  const parsed = Recipe.safeParse({ ...input, kind: 'recipe' });
  if (!parsed.success) {
    throw new Error(`Recipe "${input.name}" is invalid:\n${z.prettifyError(parsed.error)}`);
  }
  return checkRecipe(parsed.data);
}

/**
 * The checks across a parsed recipe's stages that its schema cannot make (names used once, inputs that
 * are earlier stages of the right kind, each stage's topology, the recipe's own); the recipe, or an error
 * listing every problem.
 */
export function checkRecipe(recipe: Recipe): Recipe {
  const seen = new Map<string, Stage>();
  const problems: string[] = [];
  try {
    checkTopology(recipe.topology);
  } catch (error) {
    problems.push(`topology: ${(error as Error).message}`);
  }
  for (const [i, stage] of recipe.stages.entries()) {
    const where = `stages[${i}] (${stage.name})`;
    if (stage.type === 'import' && (stage.checkpoint === undefined) === (stage.dataset === undefined))
      problems.push(`${where}: an import names either a checkpoint or a dataset`);
    if (seen.has(stage.name)) problems.push(`${where}: the name ${stage.name} is used twice`);
    for (const input of stageInputs(stage, recipe.topology.rewards)) {
      const source = seen.get(input.name);
      if (!source) {
        const later = recipe.stages.slice(i + 1).some((s) => s.name === input.name);
        problems.push(
          `${where}: ${input.role} names ${input.name}, ${later ? 'which comes later: a stage reads only earlier stages' : 'which is not a stage of this recipe'}`,
        );
      } else if (outputKind(source) !== input.kind) {
        problems.push(
          `${where}: ${input.role} needs a ${input.kind}, but ${input.name} (${source.type}) makes a ${outputKind(source)}`,
        );
      }
    }
    if (stage.type === 'rewardModel') {
      for (const name of stage.pairs) {
        const source = seen.get(name);
        if (source && source.type !== 'rejectionSample' && !(source.type === 'import' && source.dataset))
          problems.push(
            `${where}: pairs come from rejectionSample stages or imported datasets of pairs; ${name} is a ${source.type} stage`,
          );
      }
    }
    try {
      if (stage.type === 'grpo') grpoTopology(recipe, stage);
      if (stage.type === 'pretrain') pretrainTopology(recipe, stage);
    } catch (error) {
      problems.push(`${where}: ${(error as Error).message}`);
    }
    seen.set(stage.name, stage);
  }
  if (recipe.final !== undefined) {
    const final = seen.get(recipe.final);
    if (!final) problems.push(`final: ${recipe.final} is not a stage of this recipe`);
    else if (outputKind(final) !== 'checkpoint')
      problems.push(`final: ${recipe.final} (${final.type}) makes a ${outputKind(final)}, not a checkpoint`);
  }
  if (problems.length > 0) throw new Error(`Recipe "${recipe.name}" is invalid:\n${problems.join('\n')}`);
  return recipe;
}

export function isRecipe(value: unknown): boolean {
  return typeof value === 'object' && value !== null && (value as { kind?: unknown }).kind === 'recipe';
}

/** `rxrl describe` of a recipe: each stage, what it reads and what it writes, without running anything. */
export function describeRecipe(recipe: Recipe, runDir: string): string[] {
  const lines = [
    `${recipe.name}: ${recipe.description}`,
    `task: ${JSON.stringify(recipe.topology.task)}`,
    '',
  ];
  for (const [i, stage] of recipe.stages.entries()) {
    const byRole = new Map<string, string[]>();
    for (const input of stageInputs(stage, recipe.topology.rewards))
      byRole.set(input.role, [...(byRole.get(input.role) ?? []), input.name]);
    const inputs = [...byRole].map(([role, names]) => `${role}: ${names.join(', ')}`).join('; ');
    lines.push(`${i + 1}. ${stage.name} (${stage.type})${inputs ? `  <- ${inputs}` : ''}`);
    lines.push(`   ${stageSummary(stage)}`);
    lines.push(`   -> ${outputKind(stage)} ${outputPath(runDir, stage)}`);
  }
  return lines;
}

function stageSummary(stage: Stage): string {
  switch (stage.type) {
    case 'pretrain':
      return `base model by next-token training on the task corpus${stage.model ? `, shape ${JSON.stringify(stage.model)}` : ''}${stage.steps !== undefined ? `, ${stage.steps} steps` : ''}`;
    case 'import':
      return stage.dataset !== undefined ? `dataset ${stage.dataset}` : `checkpoint ${stage.checkpoint}`;
    case 'coldStart':
      return `${stage.records} correct, readable records in the <think>/<answer> format`;
    case 'sft':
      return `SFT ${stage.steps} steps x ${stage.batchSize}, lr ${stage.learningRate}${stage.pack ? ', packed' : ''}, ${stage.heldOut} records held out`;
    case 'grpo':
      return `GRPO ${stage.steps} steps${stage.rewards ? `, rewards ${stage.rewards.map((r) => `${r.kind}x${r.weight}`).join(' + ')}` : ''}`;
    case 'rejectionSample':
      return `${stage.k} samples x ${stage.prompts} prompts, keep <= ${stage.keepPerPrompt} correct, formatted${stage.language ? `, ${stage.language}-consistent` : ''}, loop-free`;
    case 'distill':
      return `SFT of the student on the teacher's traces, ${stage.steps} steps x ${stage.batchSize}; student vs teacher pass@1`;
    case 'rewardModel':
      return `preference model (Bradley-Terry, ${stage.hiddenUnits} hidden units, ${stage.epochs} epochs) on accepted vs rejected samples of ${stage.pairs.join(', ')}`;
    case 'eval':
      return `R1 evaluation (pass@1 over k, cons@k, format, language consistency${stage.language ? ` in ${stage.language}` : ''}) of ${stage.checkpoints.join(', ')}`;
  }
}

/** Where a stage's output lives under the run directory (an import's is where it was made). */
export function outputPath(runDir: string, stage: Stage): string {
  if (stage.type === 'import') return (stage.checkpoint ?? stage.dataset)!;
  const dir = `${runDir.replace(/\/+$/, '')}/${stage.name}`;
  switch (outputKind(stage)) {
    case 'checkpoint':
      return `${dir}/checkpoint`;
    case 'dataset':
      return `${dir}/data.jsonl`;
    case 'rewardModel':
      return `${dir}/model`;
    case 'report':
      return `${dir}/report.json`;
  }
}
