/** Recipes as data: validation of the stage graph, describe, and the pieces stages are made of. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import base from '../../pipelines/r1-zero-arithmetic.ts';
import distill from '../../pipelines/distill-arithmetic.ts';
import r1 from '../../pipelines/r1-arithmetic.ts';
import lc from '../../pipelines/language-consistency.ts';
import { CharTokenizer } from '../../src/policy/tokenizer.ts';
import { defineRecipe, describeRecipe, type RecipeInput } from '../../src/recipe/recipe.ts';
import { coldStartRecords, readRecords, writeRecords } from '../../src/recipe/records.ts';
import { judgeSample, maxStepRepeats } from '../../src/recipe/rejection.ts';
import { epochBatches, packExamples, recordExample } from '../../src/recipe/sft.ts';
import { seededUniform } from '../../src/random.ts';
import { formatReward } from '../../src/rewards/rewards.ts';
import { taskRuntime } from '../../src/run/taskRuntime.ts';

const dir = mkdtempSync(join(tmpdir(), 'rxrl-recipe-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const recipe = (stages: RecipeInput['stages']): RecipeInput => ({
  name: 'r',
  description: 'test',
  topology: base,
  stages,
});

describe('defineRecipe', () => {
  it('accepts the shipped recipes', () => {
    expect(r1.stages.map((s) => s.type)).toContain('rejectionSample');
    expect(distill.stages.find((s) => s.type === 'distill')).toBeDefined();
  });

  it('names the stage and field of every broken reference at once', () => {
    const attempt = () =>
      defineRecipe(
        recipe([
          { type: 'pretrain', name: 'base' },
          {
            type: 'sft',
            name: 'sft',
            from: 'rl',
            data: ['base'],
            steps: 1,
            batchSize: 1,
            learningRate: 1e-3,
          },
          { type: 'grpo', name: 'rl', from: 'nowhere', steps: 1 },
          { type: 'pretrain', name: 'base' },
          { type: 'import', name: 'both', checkpoint: 'a', dataset: 'b' },
        ]),
      );
    expect(attempt).toThrow(/stages\[1\] \(sft\): from names rl, which comes later/);
    expect(attempt).toThrow(
      /stages\[1\] \(sft\): data needs a dataset, but base \(pretrain\) makes a checkpoint/,
    );
    expect(attempt).toThrow(/stages\[2\] \(rl\): from names nowhere, which is not a stage of this recipe/);
    expect(attempt).toThrow(/stages\[3\] \(base\): the name base is used twice/);
    expect(attempt).toThrow(/stages\[4\] \(both\): an import names either a checkpoint or a dataset/);
  });

  it("a GRPO stage without rewards of its own reads the rewardModel stage the topology's rewards name", () => {
    const withModel = (stages: RecipeInput['stages']) =>
      defineRecipe({
        ...recipe(stages),
        topology: { ...base, rewards: [{ kind: 'preference_model', path: 'rm', weight: 1 }] },
      });
    const pairs = { type: 'import', name: 'pairs', dataset: 'pairs.jsonl' } as const;
    const rm = { type: 'rewardModel' as const, name: 'rm', pairs: ['pairs'] };
    const rl = { type: 'grpo', name: 'rl', from: 'base', steps: 1 } as const;
    expect(() => withModel([{ type: 'pretrain', name: 'base' }, rl, pairs, rm])).toThrow(
      /stages\[1\] \(rl\): reward names rm, which comes later/,
    );
    const ordered = withModel([{ type: 'pretrain', name: 'base' }, pairs, rm, rl]);
    expect(describeRecipe(ordered, 'runs/x').join('\n')).toMatch(/rl \(grpo\) {2}<- from: base; reward: rm/);
  });

  it('a recipe names its result by `final`: a stage that makes a checkpoint', () => {
    expect(r1.final).toBe('final-rl'); // not pure-rl, the baseline declared after it
    const stages: RecipeInput['stages'] = [
      { type: 'pretrain', name: 'base' },
      { type: 'coldStart', name: 'data', records: 10 },
    ];
    expect(() => defineRecipe({ ...recipe(stages), final: 'nowhere' })).toThrow(
      /final: nowhere is not a stage of this recipe/,
    );
    expect(() => defineRecipe({ ...recipe(stages), final: 'data' })).toThrow(
      /final: data \(coldStart\) makes a dataset, not a checkpoint/,
    );
    expect(defineRecipe({ ...recipe(stages), final: 'base' }).final).toBe('base');
  });

  it('rejects a stage setting that makes its topology invalid, and bad schema fields by path', () => {
    expect(() =>
      defineRecipe(recipe([{ type: 'pretrain', name: 'base', model: { dModel: 30, nHeads: 4 } }])),
    ).toThrow(/stages\[0\] \(base\): .*dModel must be a multiple of model.nHeads/);
    expect(() =>
      defineRecipe(recipe([{ type: 'coldStart', name: 'Bad Name', records: 0 } as never])),
    ).toThrow(/stages\[0\]\.name|stages\[0\]\.records|lowercase/);
  });

  it('describes stages with what they read and write', () => {
    const lines = describeRecipe(r1, 'runs/x');
    expect(lines).toContain('6. sft-2 (sft)  <- from: base; data: rejection, cold-start-data');
    expect(lines).toContain('   -> dataset runs/x/rejection/data.jsonl');
    expect(lines).toContain('   -> report runs/x/eval/report.json');
  });

  it('language-consistency: two GRPO stages from one bilingual base, same budget, with and without the reward', () => {
    const grpo = lc.stages.filter((s) => s.type === 'grpo');
    expect(grpo.map((s) => [s.name, s.from, s.steps, s.grpo])).toEqual([
      ['rl', 'base', 35, undefined],
      ['rl-lc', 'base', 35, undefined],
    ]);
    const kinds = grpo.map((s) => s.rewards!.map((r) => r.kind));
    expect(kinds).toEqual([
      ['accuracy', 'format'],
      ['accuracy', 'format', 'language_consistency'],
    ]);
    expect(grpo[1]!.rewards!.find((r) => r.kind === 'language_consistency')).toMatchObject({
      language: 'en',
    });
    expect(lc.topology.pretrain.reasoningLanguages).toEqual({ en: 0.5, zh: 0.5 });
    expect(lc.stages.at(-1)).toMatchObject({
      type: 'eval',
      checkpoints: ['base', 'rl', 'rl-lc'],
      language: 'en',
    });
  });

  it('rxrl describe language-consistency prints its stages without running anything', () => {
    const result = spawnSync(process.execPath, ['bin/rxrl.js', 'describe', 'language-consistency'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('3. rl-lc (grpo)  <- from: base');
    expect(result.stdout).toContain(
      'GRPO 35 steps, rewards accuracyx1 + formatx0.2 + language_consistencyx1',
    );
    expect(result.stdout).toContain('-> report runs/language-consistency/eval/report.json');
  });
});

describe('stage pieces', () => {
  const runtime = taskRuntime(base);
  const tokenizer = new CharTokenizer(runtime.alphabet);

  it('cold-start records are correct and well formatted, from the end of the training split', async () => {
    const records = coldStartRecords(base, runtime, 50);
    expect(records).toHaveLength(50);
    const signal = new AbortController().signal;
    for (const record of records) {
      const example = runtime.train.find((e) => e.id === record.id)!;
      const input = {
        prompt: runtime.prompt(example),
        completion: record.completion,
        completionTokens: 1,
        finishReason: 'eos' as const,
      };
      expect(await runtime.correctness.score(input, signal)).toBe(1);
      expect(formatReward().score(input, signal)).toBe(1);
    }
    expect(records[0]!.id).toBe(runtime.train[runtime.train.length - 1]!.id);
    const multiply = {
      ...base,
      task: { kind: 'arithmetic' as const, digits: 2, operations: ['*' as const] },
    };
    expect(() => coldStartRecords(multiply, taskRuntime(multiply), 5)).toThrow(
      /no rule-written solutions for the arithmetic task with \*; write the records yourself/,
    );
  });

  it('reads SFT records back and names file:line of each bad one', () => {
    const file = join(dir, 'records.jsonl');
    writeRecords(file, [{ prompt: 'p', completion: 'c' }]);
    expect(readRecords(file)).toEqual([{ prompt: 'p', completion: 'c' }]);
    writeFileSync(file, '{"prompt":"p","completion":"c"}\n{"prompt":"p"\n\n{"prompt":"","completion":"c"}\n');
    expect(() => readRecords(file)).toThrow(
      new RegExp(`2 bad line\\(s\\) in ${file}:\\n${file}:2: not valid JSON .*\\n${file}:4: prompt: `),
    );
  });

  it('packs records into rows of the context, loss on completions only', () => {
    const examples = [
      { tokens: [1, 2, 3, 4], lossStart: 2 },
      { tokens: [5, 6, 7], lossStart: 1 },
      { tokens: [8, 9, 10, 11, 12], lossStart: 3 },
    ];
    const rows = packExamples(examples, 8);
    expect(rows.map((r) => r.tokens)).toEqual([
      [1, 2, 3, 4, 5, 6, 7],
      [8, 9, 10, 11, 12],
    ]);
    expect(rows.map((r) => r.lossMask)).toEqual([
      [0, 0, 1, 1, 0, 1, 1],
      [0, 0, 0, 1, 1],
    ]);
    const example = recordExample(
      { prompt: 'User: 1+2. Assistant:', completion: '<answer>3</answer>' },
      tokenizer,
    );
    expect(example.tokens[example.tokens.length - 1]).toBe(tokenizer.eosId);
    expect(example.lossStart).toBe(tokenizer.encode('User: 1+2. Assistant:').length);
  });

  it('SFT batches go epoch by epoch: each row once an epoch, never twice in a batch', () => {
    const rows = Array.from({ length: 10 }, (_, i) => i);
    const batches = epochBatches(rows, 4, seededUniform(3));
    const taken = Array.from({ length: 9 }, () => batches.next().value);
    // 10 rows in batches of 4: 4, 4 and the 2 left, three epochs over.
    expect(taken.map((b) => b.length)).toEqual([4, 4, 2, 4, 4, 2, 4, 4, 2]);
    for (const batch of taken) expect(new Set(batch).size).toBe(batch.length);
    const epochs = [taken.slice(0, 3), taken.slice(3, 6), taken.slice(6)].map((e) => e.flat());
    for (const epoch of epochs) expect([...epoch].sort((a, b) => a - b)).toEqual(rows);
    expect(epochs[1]).not.toEqual(epochs[0]);
    // Fewer rows than a batch: every batch is all of them.
    const few = epochBatches([7, 8], 4, seededUniform(1));
    for (let i = 0; i < 3; i++) expect([...few.next().value].sort()).toEqual([7, 8]);
  });

  it('judges samples: truncated, format, incorrect, language, repetition, or fit', async () => {
    const example = runtime.train[0]!;
    const sample = (completion: string, finishReason: 'eos' | 'length' = 'eos') => ({
      prompt: runtime.prompt(example),
      completion,
      finishReason,
      completionTokenIds: [1, 2, 3], // the judge reads the text
    });
    const [a, b] = example.question.split('+').map(Number) as [number, number];
    const right = String(a + b);
    const rules = { language: 'en' as const, minLanguageConsistency: 0.9, maxRepeats: 3 };
    const judge = (completion: string, finish: 'eos' | 'length' = 'eos') =>
      judgeSample(sample(completion, finish), runtime, rules);
    expect(await judge(`<think>ok</think><answer>${right}</answer>`, 'length')).toBe('truncated');
    expect(await judge(`<answer>${right}</answer>`)).toBe('format');
    expect(await judge(`<think>add</think><answer>${a + b + 1}</answer>`)).toBe('incorrect');
    expect(await judge(`<think>我们 计算 the sum</think><answer>${right}</answer>`)).toBe('language');
    expect(await judge(`<think>1+1=2,1+1=2,1+1=2,1+1=2</think><answer>${right}</answer>`)).toBe('repetition');
    expect(await judge(`<think>1+1=2,1+1=2</think><answer>${right}</answer>`)).toBeNull();
    expect(maxStepRepeats('<think>a,b,a;a\na</think>')).toBe(4);
  });
});
