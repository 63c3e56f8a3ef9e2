/**
 * A whole recipe in miniature, for real (wasm, worker threads): pretrain -> cold start -> GRPO -> rejection
 * sampling -> SFT -> distillation -> eval; then a re-run reuses every stage, and a redo of one stage reruns
 * it and exactly the stages downstream of it.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import base from '../../pipelines/r1-zero-arithmetic.ts';
import { defineRecipe } from '../../src/recipe/recipe.ts';
import { readRecords } from '../../src/recipe/records.ts';
import { runRecipe, type RecipeEvent } from '../../src/recipe/run.ts';

const root = mkdtempSync(join(tmpdir(), 'rxrl-recipe-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const tiny = defineRecipe({
  name: 'tiny-recipe',
  description: 'every stage type at toy sizes',
  topology: {
    ...base,
    name: 'tiny-recipe',
    data: { trainPrompts: 200, testPrompts: 8 },
    model: { contextLength: 64, dModel: 32, nLayers: 1, nHeads: 2 },
    pretrain: { ...base.pretrain, steps: 30, batchSize: 16 },
    grpo: { ...base.grpo, promptsPerStep: 2, groupSize: 4, dynamicSampling: false, eta: 0 },
    sampling: { ...base.sampling, maxNewTokens: 24 },
    eval: { ...base.eval, every: 0, prompts: 4, k: 2 },
    run: { steps: 2, checkpointEvery: 1 },
  },
  stages: [
    { type: 'pretrain', name: 'base' },
    { type: 'coldStart', name: 'cold-start-data', records: 40 },
    {
      type: 'sft',
      name: 'cold-start',
      from: 'base',
      data: ['cold-start-data'],
      steps: 12,
      batchSize: 8,
      learningRate: 3e-3,
      pack: true,
      heldOut: 8,
    },
    { type: 'grpo', name: 'rl', from: 'cold-start', steps: 2 },
    { type: 'rejectionSample', name: 'rejection', from: 'rl', prompts: 6, k: 2, keepPerPrompt: 2 },
    {
      type: 'sft',
      name: 'sft-2',
      from: 'base',
      data: ['rejection', 'cold-start-data'],
      steps: 3,
      batchSize: 8,
      learningRate: 1e-3,
    },
    { type: 'pretrain', name: 'student-base', model: { dModel: 16, nHeads: 2 }, steps: 10 },
    {
      type: 'distill',
      name: 'student',
      teacher: 'rl',
      student: 'student-base',
      data: ['cold-start-data'],
      steps: 3,
      batchSize: 8,
      learningRate: 1e-3,
    },
    { type: 'eval', name: 'eval', checkpoints: ['base', 'cold-start', 'sft-2'] },
  ],
});
const names = tiny.stages.map((s) => s.name);
const options = {
  recipe: tiny,
  backend: 'wasm' as const,
  runDir: join(root, 'run'),
  cacheDir: join(root, 'cache'),
};

it(
  'runs every stage, then reuses them, then redoes one stage and those downstream of it',
  { timeout: 900_000 },
  async () => {
    const events: RecipeEvent[] = [];
    const first = await runRecipe({ ...options, onEvent: (e) => events.push(e) });
    expect(first.ran).toEqual(names);
    const report = (name: string) =>
      first.stages.find((s) => s.stage === name)!.summary as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

    // Cold start: SFT on correct records lowers the held-out loss.
    const coldStart = report('cold-start');
    expect(coldStart.heldOutRecords).toBe(8);
    expect(coldStart.heldOutLossAfter).toBeLessThan(coldStart.heldOutLossBefore);
    // GRPO started from the cold-start checkpoint and trained its steps; the progress bar saw them.
    expect(report('rl').steps).toBe(2);
    expect(events.some((e) => e.kind === 'grpo' && e.event.kind === 'step' && e.stage === 'rl')).toBe(true);
    // Rejection sampling: every sample counted once, the kept ones written as records.
    const rejection = report('rejection');
    const rejected = Object.values(rejection.rejected as Record<string, number>).reduce((a, b) => a + b, 0);
    expect(rejection.generated).toBe(6 * 2);
    expect(rejection.kept + rejected).toBe(rejection.generated);
    expect(readRecords(join(options.runDir, 'rejection', 'data.jsonl'))).toHaveLength(rejection.kept);
    // The student is the smaller shape, evaluated beside its teacher.
    expect(report('student-base').parameters).toBeLessThan(report('base').parameters);
    expect(report('student').student.pass1).toBeGreaterThanOrEqual(0);
    expect(report('student').teacher.k).toBe(2);
    const evalReport = JSON.parse(readFileSync(join(options.runDir, 'eval', 'report.json'), 'utf8'));
    expect(Object.keys(evalReport.results)).toEqual(['base', 'cold-start', 'sft-2']);
    for (const name of names.filter((n) => n !== 'eval')) {
      const kind = ['cold-start-data', 'rejection'].includes(name)
        ? 'data.jsonl'
        : 'checkpoint/manifest.json';
      expect(existsSync(join(options.runDir, name, kind)), name).toBe(true);
    }

    // Again: nothing to do, the same reports.
    const again = await runRecipe(options);
    expect(again.ran).toEqual([]);
    expect(again.skipped).toEqual(names);
    expect(again.stages.map((s) => s.finishedAt)).toEqual(first.stages.map((s) => s.finishedAt));

    // Redo the cold start: it and what reads it, directly or not, run again; base and the student's base do not.
    const redo = await runRecipe({ ...options, redo: ['cold-start'] });
    expect(redo.ran).toEqual(['cold-start', 'rl', 'rejection', 'sft-2', 'student', 'eval']);
    expect(redo.skipped).toEqual(['base', 'cold-start-data', 'student-base']);

    await expect(runRecipe({ ...options, redo: ['nope'] })).rejects.toThrow(
      /No stage named nope in tiny-recipe: its stages are base, cold-start-data, cold-start, rl/,
    );
  },
);
