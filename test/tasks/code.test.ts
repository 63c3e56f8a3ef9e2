import { describe, expect, it } from 'vitest';
import { codeReward, CodeAnswer } from '../../src/rewards/rewards.ts';
import { outputsMatch, Sandbox } from '../../src/rewards/sandbox.ts';
import { CODE_FAMILIES, codeExamples, codeSplitSizes, type CodeExample } from '../../src/tasks/code.ts';
import { R1_ZERO_TEMPLATE, toPrompt } from '../../src/tasks/task.ts';

/** Runs a reference solution in this process (trusted code) with a fake stdin, returning its stdout. */
function runInProcess(program: string, stdin: string): string {
  const lines: string[] = [];
  const fakeRequire = (name: string) => {
    if (name !== 'fs') throw new Error(`unexpected require(${name})`);
    return { readFileSync: () => stdin };
  };
  const fakeConsole = { log: (...args: unknown[]) => lines.push(args.join(' ')) };
  new Function('require', 'console', program)(fakeRequire, fakeConsole);
  return lines.join('\n');
}

/** A reference solution without its input-reading line (the layouts differ there and only there). */
const programBody = (solution: string): string => solution.split('\n').slice(1).join('\n');

describe('code task', () => {
  it('is fixed by its seed, with disjoint train and held-out sets', () => {
    const sizes = codeSplitSizes();
    expect(sizes.train).toBeGreaterThan(200);
    expect(sizes.test).toBeGreaterThan(20);
    const train = codeExamples('train', 200, 1);
    expect(codeExamples('train', 200, 1)).toEqual(train);
    expect(codeExamples('train', 200, 2).map((e) => e.question)).not.toEqual(train.map((e) => e.question));
    const test = codeExamples('test', sizes.test, 1);
    const trainSet = codeExamples('train', sizes.train, 7);
    const trainQs = new Set(trainSet.map((e) => e.question));
    expect(test.some((e) => trainQs.has(e.question))).toBe(false);
    // Nor the same task in another input layout: no held-out question has a training question's program.
    const trainPrograms = new Set(trainSet.map((e) => programBody(e.solution)));
    expect(test.filter((e) => trainPrograms.has(programBody(e.solution))).map((e) => e.question)).toEqual([]);
    expect(new Set(test.map((e) => e.question)).size).toBe(test.length);
    expect(() => codeExamples('test', sizes.test + 1, 1)).toThrow(RangeError);
  });

  it('has 3 to 5 valid tests per question, and reference solutions that pass them', () => {
    const all = [...codeExamples('train', codeSplitSizes().train, 3), ...codeExamples('test', 10, 3)];
    for (const e of all) {
      expect(CodeAnswer.parse(e.answer)).toEqual(e.answer);
      expect(e.answer.tests.length).toBeGreaterThanOrEqual(3);
      expect(e.answer.tests.length).toBeLessThanOrEqual(5);
      for (const t of e.answer.tests) {
        expect(outputsMatch(runInProcess(e.solution, t.input), t.output), `${e.question}\n${t.input}`).toBe(
          true,
        );
      }
    }
    // A question's tests depend on the question alone, not on the seed that picked it.
    const byQuestion = new Map(all.map((e) => [e.question, e.answer]));
    for (const e of codeExamples('train', 50, 11)) {
      if (byQuestion.has(e.question)) expect(e.answer).toEqual(byQuestion.get(e.question));
    }
  });

  it('makes R1-Zero prompts', () => {
    const [e] = codeExamples('train', 1, 5);
    const p = toPrompt('code', e!, R1_ZERO_TEMPLATE);
    expect(p.text).toMatch(/^A conversation between User and Assistant\./);
    expect(p.text).toContain(`User: ${e!.question}. Assistant:`);
    expect(p.answer).toEqual(e!.answer);
    expect(p.text).not.toContain(e!.solution);
  });

  it('scores each family’s reference solution 1 through the sandbox, and a wrong program below 1', async () => {
    const sandbox = await Sandbox.create({ require: [], concurrency: 2, onWarning: () => {} });
    const reward = codeReward({ sandbox });
    const { train, test } = codeSplitSizes();
    const pool = [...codeExamples('train', train, 4), ...codeExamples('test', test, 4)];
    // One question of each family, the one with the fewest tests (each test is a process).
    const fewest = (f: string) =>
      pool.filter((e) => e.family === f).sort((a, b) => a.answer.tests.length - b.answer.tests.length)[0]!;
    const oneEach = CODE_FAMILIES.map(fewest);
    expect(oneEach.every(Boolean)).toBe(true);
    const score = (e: CodeExample, program: string) =>
      reward.score(
        {
          prompt: toPrompt('code', e, R1_ZERO_TEMPLATE),
          completion: `<think>read, compute, print</think> <answer>\`\`\`js\n${program}\n\`\`\`</answer>`,
          completionTokens: 100,
          finishReason: 'eos',
        },
        new AbortController().signal,
      );
    const scores = await Promise.all(oneEach.map((e) => score(e, e.solution)));
    expect(scores).toEqual(oneEach.map(() => 1));
    expect(await score(oneEach[0]!, 'console.log(0)')).toBeLessThan(1);
  }, 180_000);
});

describe('code task in a topology', () => {
  it('a topology names the code task and reward; the task runtime scores a reference solution 1', async () => {
    const { defineTopology } = await import('../../src/topology/topology.ts');
    const { taskRuntime } = await import('../../src/run/taskRuntime.ts');
    const base = (await import('../../pipelines/r1-zero-arithmetic.ts')).default;
    const topology = defineTopology({
      ...base,
      name: 'code-task',
      task: { kind: 'code' },
      data: { trainPrompts: 20, testPrompts: 5 },
      eval: { ...base.eval, prompts: 5 },
      rewards: [{ kind: 'code', weight: 1, timeoutMs: 5_000 }],
    });
    const runtime = taskRuntime(topology);
    expect(runtime.train).toHaveLength(20);
    expect(runtime.alphabet).toContain('{');
    const example = runtime.test[0] as CodeExample;
    const input = {
      prompt: runtime.prompt(example),
      completion: `<think>read, compute</think><answer>${example.solution}</answer>`,
      completionTokens: 1,
      finishReason: 'eos' as const,
    };
    const signal = new AbortController().signal;
    // Evaluation judges with the topology's code reward itself: its limits, its sandbox.
    expect(runtime.correctness).toBe(runtime.rewards[0]!.fn);
    expect(await runtime.correctness.score(input, signal)).toBe(1);
    expect(
      await runtime.correctness.score({ ...input, completion: '<answer>console.log(1)</answer>' }, signal),
    ).toBeLessThan(1);
  }, 180_000);
});
