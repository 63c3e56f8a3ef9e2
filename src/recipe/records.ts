import { readFileSync, writeFileSync } from 'node:fs';
import { z } from 'zod';
import type { CountdownAnswer } from '../rewards/rewards.ts';
import type { TaskRuntime } from '../run/taskRuntime.ts';
import { correctAdditionCompletion, countdownChains } from '../tasks/corpus.ts';
import type { Topology } from '../topology/topology.ts';
import { parseJsonl } from '../tasks/jsonl.ts';

/**
 * One supervised fine-tuning record: the prompt as the policy sees it and the completion to learn
 * (cold-start data, rejection-sampled data, a teacher's traces). `source` says which stage made it.
 */
export const SftRecord = z
  .object({
    prompt: z.string().min(1),
    completion: z.string().min(1),
    source: z.string().optional(),
    /** The prompt's id in its task, so datasets can be joined or deduplicated. */
    id: z.string().optional(),
  })
  .strict();
export type SftRecord = z.infer<typeof SftRecord>;

export function writeRecords(file: string, records: readonly SftRecord[]): void {
  writeFileSync(file, records.map((record) => `${JSON.stringify(record)}\n`).join(''));
}

/** Reads a JSONL file of SFT records; every bad line is reported as file:line: reason, all at once. */
export function readRecords(file: string): SftRecord[] {
  return parseJsonl(readFileSync(file, 'utf8'), file, SftRecord).map((r) => r.value);
}

/**
 * Cold-start data (DeepSeek-R1 §2.3.1): a few correct, readable chains of thought in the <think>/<answer>
 * format, written by rule from the task's own solver, for the last `count` training questions (the RL
 * stages sample from the start of the split).
 */
export function coldStartRecords(topology: Topology, runtime: TaskRuntime, count: number): SftRecord[] {
  const solve = solver(topology);
  const records: SftRecord[] = [];
  for (const example of [...runtime.train].reverse()) {
    if (records.length >= count) break;
    const completion = solve(example.question, example.answer);
    if (completion === null) continue;
    records.push({ prompt: runtime.prompt(example).text, completion, source: 'cold-start', id: example.id });
  }
  if (records.length < count) {
    throw new Error(
      `coldStart: asked for ${count} records but the ${topology.name} training split has ${records.length} solvable questions`,
    );
  }
  return records;
}

function solver(topology: Topology): (question: string, answer: unknown) => string | null {
  const { task } = topology;
  if (task.kind === 'arithmetic' && task.operations.length === 1 && task.operations[0] === '+') {
    return (question) => {
      const [a, b] = question.split('+').map(Number);
      return correctAdditionCompletion(a!, b!);
    };
  }
  if (task.kind === 'countdown') {
    return (_question, answer) => {
      const { numbers, target } = answer as CountdownAnswer;
      const chain = countdownChains(numbers).find((c) => c.value === target);
      return chain ? `<think>${chain.steps.join(',')}</think><answer>${chain.expression}</answer>` : null;
    };
  }
  throw new Error(
    `coldStart: no rule-written solutions for the ${task.kind} task${task.kind === 'arithmetic' ? ` with ${task.operations.join(' and ')}` : ''}; ` +
      'write the records yourself (a JSONL of {prompt, completion}) and read them with an import stage ({ type: "import", dataset: <file> })',
  );
}
