import { SCHEMA_VERSION, type Prompt } from '../../schemas/index.ts';

/** One question of a verifiable task; `answer` is what its verifier compares against. */
export interface TaskExample {
  id: string;
  question: string;
  answer: unknown;
  /** A data set row's own fields (its `meta`), handed to rewards as the prompt's `meta`. */
  meta?: Record<string, unknown>;
}

/**
 * The R1-Zero template (DeepSeek-R1, Table 1). `{prompt}` is replaced by the question.
 */
export const R1_ZERO_TEMPLATE =
  'A conversation between User and Assistant. The user asks a question, and the Assistant solves it. ' +
  'The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. ' +
  'The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, ' +
  'respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. ' +
  'User: {prompt}. Assistant:';

/**
 * The same conversation frame without the instructions, for models with a context of a few dozen
 * tokens: the pretraining corpus teaches the tags instead of the instructions.
 */
export const R1_ZERO_SHORT_TEMPLATE = 'User: {prompt}. Assistant:';

export function applyTemplate(template: string, question: string): string {
  if (!template.includes('{prompt}'))
    throw new Error(`prompt template has no {prompt} placeholder: "${template}"`);
  return template.replace('{prompt}', question);
}

export function toPrompt(task: string, example: TaskExample, template: string, idSuffix = ''): Prompt {
  return {
    schemaVersion: SCHEMA_VERSION,
    id: `${example.id}${idSuffix}`,
    task,
    text: applyTemplate(template, example.question),
    answer: example.answer,
    ...(example.meta ? { meta: example.meta } : {}),
  };
}
