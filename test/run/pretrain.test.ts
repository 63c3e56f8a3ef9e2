import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import countdown from '../../pipelines/r1-zero-countdown.ts';
import { selectBackend } from '../../src/policy/backend.ts';
import { GPT } from '../../src/policy/gpt.ts';
import { CharTokenizer } from '../../src/policy/tokenizer.ts';
import { ensureBaseModel } from '../../src/run/pretrain.ts';
import { taskRuntime, type TaskRuntime } from '../../src/run/taskRuntime.ts';
import { defineTopology } from '../../src/topology/topology.ts';

const root = mkdtempSync(join(tmpdir(), 'rxrl-pretrain-'));
beforeAll(() => selectBackend('wasm'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Two steps of 8 rows on a tiny Countdown model, counting the rows each kind of document fills. */
async function pretrain(drill: number, cacheDir: string, positionEncoding?: 'learned' | 'rope') {
  const topology = defineTopology({
    ...countdown,
    data: { trainPrompts: 50, testPrompts: 4 },
    eval: { ...countdown.eval, prompts: 4 },
    model: {
      contextLength: countdown.model.contextLength,
      dModel: 16,
      nLayers: 1,
      nHeads: 2,
      ...(positionEncoding ? { positionEncoding } : {}),
    },
    pretrain: { ...countdown.pretrain, steps: 2, batchSize: 8, drill },
  });
  const runtime = taskRuntime(topology);
  const tokenizer = new CharTokenizer(runtime.alphabet);
  const rows = { task: 0, drill: 0, drillChars: [] as number[] };
  const counting: TaskRuntime = {
    ...runtime,
    corpusCompletion: (e, rand) => {
      rows.task++;
      return runtime.corpusCompletion!(e, rand);
    },
    drillDocument: (e, rand, maxChars) => {
      rows.drill++;
      // The room left after the prompt: the row is the context's length at most.
      rows.drillChars.push(maxChars + tokenizer.encode(runtime.prompt(e).text).length);
      return runtime.drillDocument!(e, rand, maxChars);
    },
  };
  const base = await ensureBaseModel({ topology, runtime: counting, tokenizer, cacheDir });
  const model = {
    positionEncoding: base.model.config.positionEncoding,
    hasWpe: base.model.params.has('wpe'),
  };
  base.model.dispose();
  return { rows, cached: base.cached, dir: base.dir, model };
}

describe('ensureBaseModel', { timeout: 120_000 }, () => {
  it('fills about the drill share of the rows with drill, each filling the context after its prompt', async () => {
    const none = await pretrain(0, join(root, 'a'));
    expect(none.rows).toEqual({ task: 16, drill: 0, drillChars: [] });
    const all = await pretrain(1, join(root, 'a'));
    expect(all.rows.task).toBe(0);
    expect(all.rows.drill).toBe(16);
    expect(new Set(all.rows.drillChars)).toEqual(new Set([countdown.model.contextLength]));
    const half = await pretrain(0.5, join(root, 'a'));
    expect(half.rows.task + half.rows.drill).toBe(16);
    expect(half.rows.drill).toBeGreaterThan(2);
    expect(half.rows.task).toBeGreaterThan(2);
  });

  it('caches the base model under a key that the drill share is part of', async () => {
    const first = await pretrain(0.5, join(root, 'b'));
    const again = await pretrain(0.5, join(root, 'b'));
    expect([first.cached, again.cached]).toEqual([false, true]);
    expect(again.dir).toBe(first.dir);
    expect(again.rows).toEqual({ task: 0, drill: 0, drillChars: [] });
    const other = await pretrain(0.25, join(root, 'b'));
    expect(other.cached).toBe(false);
    expect(other.dir).not.toBe(first.dir);
  });

  it('builds the model the topology declares, and caches each position encoding apart', async () => {
    const learned = await pretrain(0, join(root, 'c'));
    const rope = await pretrain(0, join(root, 'c'), 'rope');
    expect(learned.model).toEqual({ positionEncoding: 'learned', hasWpe: true });
    expect(rope.model).toEqual({ positionEncoding: 'rope', hasWpe: false });
    expect([rope.cached, rope.dir === learned.dir]).toEqual([false, false]);
    const again = await pretrain(0, join(root, 'c'), 'rope');
    expect([again.cached, again.model.positionEncoding]).toEqual([true, 'rope']);
  });

  it('an interrupted pretraining goes on from its last saved step to the weights of an uninterrupted one', async () => {
    const topology = defineTopology({
      ...countdown,
      data: { trainPrompts: 50, testPrompts: 4 },
      eval: { ...countdown.eval, prompts: 4 },
      model: { contextLength: countdown.model.contextLength, dModel: 16, nLayers: 1, nHeads: 2 },
      pretrain: { ...countdown.pretrain, steps: 6, batchSize: 4 },
    });
    const runtime = taskRuntime(topology);
    const tokenizer = new CharTokenizer(runtime.alphabet);
    const common = { topology, runtime, tokenizer, checkpointEvery: 2 };
    const straight = await ensureBaseModel({ ...common, cacheDir: join(root, 'straight') });

    const trained: number[] = [];
    const cacheDir = join(root, 'interrupted');
    await expect(
      ensureBaseModel({
        ...common,
        cacheDir,
        onStep: (step) => {
          trained.push(step);
          if (step === 5) throw new Error('stopped at step 5');
        },
      }),
    ).rejects.toThrow('stopped at step 5');
    // Saved after step 4; step 5 was trained but not saved, so it is trained again.
    const resumed = await ensureBaseModel({ ...common, cacheDir, onStep: (step) => trained.push(step) });
    expect(trained).toEqual([1, 2, 3, 4, 5, 5, 6]);
    expect(resumed.cached).toBe(false);
    expect(existsSync(`${resumed.dir}.partial`)).toBe(false);
    for (const [name, p] of straight.model.params) {
      const a = p.dataSync();
      const b = resumed.model.params.get(name)!.dataSync();
      let diff = 0;
      for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
      expect(diff, name).toBeLessThan(1e-6);
    }
    // And differs from the base model before training, so the comparison has something to compare.
    const initial = new GPT(straight.model.config);
    expect(initial.params.get('head')!.dataSync()).not.toEqual(straight.model.params.get('head')!.dataSync());
    for (const m of [straight.model, resumed.model, initial]) m.dispose();
  });
});

describe('pretraining rows', () => {
  it('a corpus document longer than the context names the setting to change, before it trains', async () => {
    const topology = defineTopology({
      ...countdown,
      data: { trainPrompts: 50, testPrompts: 4 },
      eval: { ...countdown.eval, prompts: 4 },
      model: { contextLength: 48, dModel: 16, nLayers: 1, nHeads: 2 },
      sampling: { ...countdown.sampling, maxNewTokens: 16 },
      pretrain: { ...countdown.pretrain, steps: 2, batchSize: 4 },
    });
    const runtime = taskRuntime(topology);
    const tokenizer = new CharTokenizer(runtime.alphabet);
    await expect(
      ensureBaseModel({ topology, runtime, tokenizer, cacheDir: join(root, 'short-context') }),
    ).rejects.toThrow(/take \d+ tokens, more than model.contextLength \(48\): raise model.contextLength/);
  });
});
