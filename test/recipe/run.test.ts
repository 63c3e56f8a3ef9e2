/**
 * A whole recipe in miniature, for real (wasm, worker threads): pretrain -> cold start -> GRPO -> rejection
 * sampling -> SFT -> distillation -> eval; then a re-run reuses every stage, and a redo of one stage reruns
 * it and exactly the stages downstream of it.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import base from '../../pipelines/r1-zero-arithmetic.ts';
import { defineRecipe } from '../../src/recipe/recipe.ts';
import { readRecords } from '../../src/recipe/records.ts';
import { runRecipe, type RecipeEvent } from '../../src/recipe/run.ts';

const root = mkdtempSync(join(tmpdir(), 'rxrl-recipe-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

// Preference pairs of one's own, beside those rejection sampling finds.
const pairsFile = join(root, 'pairs.jsonl');
writeFileSync(
  pairsFile,
  Array.from({ length: 12 }, (_, i) =>
    JSON.stringify({
      prompt: `User: ${i}+${i}. Assistant:`,
      chosen: `<think>${i}+${i}=${2 * i}</think><answer>${2 * i}</answer>`,
      rejected: `${i}${i}${i}${i}`,
    }),
  ).join('\n'),
);

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
    { type: 'rejectionSample', name: 'rejection', from: 'rl', prompts: 16, k: 4, keepPerPrompt: 2 },
    {
      type: 'sft',
      name: 'sft-2',
      from: 'base',
      data: ['rejection', 'cold-start-data'],
      steps: 3,
      batchSize: 8,
      learningRate: 1e-3,
    },
    { type: 'import', name: 'my-pairs', dataset: pairsFile },
    { type: 'rewardModel', name: 'rm', pairs: ['rejection', 'my-pairs'], epochs: 2, heldOut: 4 },
    {
      type: 'grpo',
      name: 'rl-2',
      from: 'sft-2',
      steps: 1,
      rewards: [
        { kind: 'accuracy', weight: 1 },
        { kind: 'preference_model', path: 'rm', weight: 0.5 },
      ],
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
    expect(first.ran).toEqual(names.filter((n) => n !== 'my-pairs')); // an import is checked, not run
    const report = (name: string) =>
      first.stages.find((s) => s.stage === name)!.summary as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

    // Cold start: SFT on correct records lowers the held-out loss.
    const coldStart = report('cold-start');
    expect(coldStart.heldOutRecords).toBe(8);
    expect(coldStart.heldOutLossAfter).toBeLessThan(coldStart.heldOutLossBefore);
    // GRPO started from the cold-start checkpoint and trained its steps; the progress bar saw them.
    expect(report('rl').steps).toBe(2);
    // Each GRPO stage accounts for its own samples, not those of the stages before it (one Metrics for all).
    for (const [name, steps] of [
      ['rl', 2],
      ['rl-2', 1],
    ] as const) {
      const { generated, trained, drops } = report(name).accounting;
      expect(trained, name).toBe(steps * 2 * 4);
      expect(generated, name).toBe(
        trained + Object.values(drops as Record<string, number>).reduce((a, b) => a + b, 0),
      );
    }
    expect(events.some((e) => e.kind === 'grpo' && e.event.kind === 'step' && e.stage === 'rl')).toBe(true);
    // Rejection sampling: every sample counted once, the kept ones written as records.
    const rejection = report('rejection');
    const rejected = Object.values(rejection.rejected as Record<string, number>).reduce((a, b) => a + b, 0);
    expect(rejection.generated).toBe(16 * 4);
    expect(rejection.kept + rejected).toBe(rejection.generated);
    expect(readRecords(join(options.runDir, 'rejection', 'data.jsonl'))).toHaveLength(rejection.kept);
    // The reward model learnt from the rejection stage's pairs (written one per line) and the 12 imported
    // ones, less the 4 held out (taken from the front), and the second RL stage scored with it.
    const pairLines = readFileSync(join(options.runDir, 'rejection', 'pairs.jsonl'), 'utf8');
    expect(pairLines.split('\n').filter(Boolean)).toHaveLength(rejection.pairs);
    const rm = report('rm');
    expect(rm.heldOutPairs).toBe(4);
    expect(rm.trainPairs).toBe(rejection.pairs + 12 - 4);
    for (const accuracy of [rm.heldOutAccuracyBefore, rm.heldOutAccuracyAfter]) {
      expect(accuracy).toBeGreaterThanOrEqual(0);
      expect(accuracy).toBeLessThanOrEqual(1);
    }
    expect(report('rl-2').rewards).toEqual(['accuracy', 'preference_model']);
    // The student is the smaller shape, evaluated beside its teacher with the same protocol.
    expect(report('student-base').parameters).toBeLessThan(report('base').parameters);
    const { student, teacher } = report('student');
    expect([student.k, teacher.k]).toEqual([2, 2]);
    for (const brief of [student, teacher]) {
      // 4 held-out prompts x 2 samples: pass@1 and the format rate count whole samples of 8.
      for (const share of [brief.pass1, brief.formatRate]) {
        expect(share * 8).toBeCloseTo(Math.round(share * 8), 9);
        expect(share).toBeGreaterThanOrEqual(0);
        expect(share).toBeLessThanOrEqual(1);
      }
    }
    const evalReport = JSON.parse(readFileSync(join(options.runDir, 'eval', 'report.json'), 'utf8'));
    expect(Object.keys(evalReport.results)).toEqual(['base', 'cold-start', 'sft-2']);
    for (const name of names.filter((n) => !['eval', 'my-pairs'].includes(n))) {
      const file =
        name === 'rm'
          ? 'model/manifest.json'
          : ['cold-start-data', 'rejection'].includes(name)
            ? 'data.jsonl'
            : 'checkpoint/manifest.json';
      expect(existsSync(join(options.runDir, name, file)), name).toBe(true);
    }

    // Again: nothing to do, the same reports.
    const again = await runRecipe(options);
    expect(again.ran).toEqual([]);
    expect(again.skipped).toEqual(names);
    const finished = (summary: typeof first) =>
      summary.stages.filter((s) => s.type !== 'import').map((s) => s.finishedAt);
    expect(finished(again)).toEqual(finished(first));

    // Redo the cold start: it and what reads it, directly or not, run again; base and the student's base do not.
    const redo = await runRecipe({ ...options, redo: ['cold-start'] });
    expect(redo.ran).toEqual(['cold-start', 'rl', 'rejection', 'sft-2', 'rm', 'rl-2', 'student', 'eval']);
    expect(redo.skipped).toEqual(['base', 'cold-start-data', 'my-pairs', 'student-base']);

    // A changed declaration reruns that stage (and what reads it) only.
    const changed = defineRecipe({
      ...tiny,
      stages: tiny.stages.map((s) => (s.name === 'student' ? { ...s, steps: 2 } : s)),
    });
    expect((await runRecipe({ ...options, recipe: changed })).ran).toEqual(['student']);

    // A stage redone on its own in one invocation (--redo rl --until rl) leaves the stages that read it out
    // of date: the next invocation runs them, and says why.
    expect((await runRecipe({ ...options, recipe: changed, redo: ['rl'], until: 'rl' })).ran).toEqual(['rl']);
    const starts: Extract<RecipeEvent, { kind: 'stage-start' }>[] = [];
    const after = await runRecipe({
      ...options,
      recipe: changed,
      onEvent: (e) => void (e.kind === 'stage-start' && starts.push(e)),
    });
    expect(after.ran).toEqual(['rejection', 'sft-2', 'rm', 'rl-2', 'student', 'eval']);
    expect(starts.find((e) => e.stage === 'rejection')!.reason).toBe('changed since: stage rl');

    // An imported file whose contents changed reruns what reads it.
    writeFileSync(pairsFile, readFileSync(pairsFile, 'utf8').split('\n').slice(1).join('\n'));
    const reimported = await runRecipe({ ...options, recipe: changed });
    expect(reimported.ran).toEqual(['rm', 'rl-2']);
    expect(reimported.stages.find((s) => s.stage === 'rm')!.summary.trainPairs).toBe(rm.trainPairs - 1);

    // An interrupted GRPO stage (no report yet, a checkpoint) resumes only if nothing it starts from changed.
    const interrupt = () => rmSync(join(options.runDir, 'rl-2', 'stage.json'));
    const steps: number[] = [];
    const reasons = async (recipe: typeof tiny) => {
      const seen: string[] = [];
      steps.length = 0;
      await runRecipe({
        ...options,
        recipe,
        onEvent: (e) => {
          if (e.kind === 'stage-start') seen.push(`${e.stage}: ${e.reason}`);
          if (e.kind === 'grpo' && e.event.kind === 'step') steps.push(e.event.step);
        },
      });
      return seen;
    };
    const rl2Report = () => JSON.parse(readFileSync(join(options.runDir, 'rl-2', 'stage.json'), 'utf8'));
    const finishedRl2 = rl2Report();
    interrupt();
    expect(await reasons(changed)).toEqual(['rl-2: resumed from its last checkpoint']);
    // It went on from its checkpoint (all of its steps were done): nothing trained again, nothing moved
    // aside, and its report's "before" is still the evaluation from before RL.
    expect(steps).toEqual([]);
    expect(existsSync(join(options.runDir, 'rl-2.previous'))).toBe(false);
    expect(rl2Report().summary.before).toEqual(finishedRl2.summary.before);
    interrupt();
    const rl2Changed = defineRecipe({
      ...changed,
      stages: changed.stages.map((s) => (s.name === 'rl-2' ? { ...s, evalEvery: 1 } : s)),
    });
    expect(await reasons(rl2Changed)).toEqual([
      'rl-2: interrupted earlier, started over: changed since: declaration',
    ]);
    expect(steps).toEqual([1]);

    await expect(runRecipe({ ...options, redo: ['nope'] })).rejects.toThrow(
      /No stage named nope in tiny-recipe: its stages are base, cold-start-data, cold-start, rl/,
    );
  },
);
