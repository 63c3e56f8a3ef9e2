import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { loadAnyPipeline, loadPipeline, PIPELINES_DIR } from '../src/cli/pipelines.ts';
import { CharTokenizer } from '../src/policy/tokenizer.ts';
import { seededUniform } from '../src/random.ts';
import { pretrainTopology } from '../src/recipe/recipe.ts';
import { baseModelKey } from '../src/run/pretrain.ts';
import { taskRuntime } from '../src/run/taskRuntime.ts';
import { CORPUS_REVISION } from '../src/tasks/corpus.ts';
import arithmetic from '../pipelines/r1-zero-arithmetic.ts';
import { defineTopology, type TopologyInput } from '../src/topology/topology.ts';

const names = readdirSync(PIPELINES_DIR)
  .filter((f) => f.endsWith('.ts'))
  .map((f) => f.slice(0, -3));

describe('shipped pipelines', () => {
  it('there are some', () => {
    expect(names).toEqual(expect.arrayContaining(['r1-zero-arithmetic', 'r1-zero-countdown']));
  });

  it.each(names)(
    '%s fits its prompts and completions in the model context and has a corpus',
    async (name) => {
      const topology = await loadPipeline(name);
      const runtime = taskRuntime(topology);
      const tokenizer = new CharTokenizer(runtime.alphabet);
      const longest = Math.max(
        ...[...runtime.train, ...runtime.test].map((e) => tokenizer.encode(runtime.prompt(e).text).length),
      );
      expect(longest + topology.sampling.maxNewTokens).toBeLessThanOrEqual(topology.model.contextLength);
      expect(runtime.train.length).toBe(topology.data.trainPrompts);
      expect(runtime.test.length).toBe(topology.data.testPrompts);
      const trainIds = new Set(runtime.train.map((e) => e.question));
      expect(runtime.test.some((e) => trainIds.has(e.question))).toBe(false);
      if (topology.pretrain.steps > 0) {
        const doc = runtime.corpusCompletion!(runtime.train[0]!, () => 0.5);
        expect(tokenizer.decode(tokenizer.encode(doc))).toBe(doc);
        // Pretraining documents fit the context after their prompt, and the policy can write one whole.
        const rand = seededUniform(1);
        for (const example of runtime.train.slice(0, 300)) {
          const text = runtime.corpusCompletion!(example, rand);
          const completion = tokenizer.encode(text).length + 1; // EOS
          const prompt = tokenizer.encode(runtime.prompt(example).text).length;
          expect(prompt + completion, text).toBeLessThanOrEqual(topology.model.contextLength);
          expect(completion, text).toBeLessThanOrEqual(topology.sampling.maxNewTokens);
        }
      }
    },
  );
});

describe('base-model cache keys', () => {
  // A corpus or tokenizer option added later must not change the base models the shipped pipelines have
  // cached (.cache/base-models/<name>-<key>): unset options stay out of the key.
  it.each([
    ['r1-zero-arithmetic', '2f16535f7ada'],
    ['r1-arithmetic', '2f16535f7ada'],
    ['r1-zero-arithmetic-paper', '2f16535f7ada'], // the same base as r1-zero-arithmetic: only GRPO differs
    ['r1-zero-countdown', '4439ca5bae88'],
  ])('%s keeps its key', async (name, key) => {
    const topology = await loadPipeline(name);
    expect(baseModelKey(topology, new CharTokenizer(taskRuntime(topology).alphabet))).toBe(key);
  });

  // The key hashes the settings, not the generator's code: this fingerprint of the documents catches a
  // generator that now writes other documents for the same settings, whose cached base models would be
  // stale.
  it.each([
    ['r1-zero-arithmetic', '2e5a9cf7005b'],
    ['r1-zero-countdown', 'ce816633f863'],
  ])('%s corpus writes the documents its cached base models learned from', async (name, fingerprint) => {
    const topology = await loadPipeline(name);
    const runtime = taskRuntime(topology);
    const rand = seededUniform(1);
    const docs = runtime.train.slice(0, 200).map((e) => runtime.corpusCompletion!(e, rand));
    expect(
      createHash('sha256').update(docs.join('\n')).digest('hex').slice(0, 12),
      `the ${topology.task.kind} corpus writes other documents than before: bump CORPUS_REVISION.${topology.task.kind} ` +
        'in src/tasks/corpus.ts (so cached base models are retrained), then update this fingerprint',
    ).toBe(fingerprint);
  });

  it('the number of training questions changes the key: pretraining draws its rows from them', async () => {
    const topology = await loadPipeline('r1-zero-arithmetic');
    const tokenizer = new CharTokenizer(taskRuntime(topology).alphabet);
    const fewer = { ...topology, data: { ...topology.data, trainPrompts: 100 } };
    expect(baseModelKey(fewer, tokenizer)).not.toBe(baseModelKey(topology, tokenizer));
  });

  it('a corpus revision changes the key', async () => {
    const topology = await loadPipeline('r1-zero-countdown');
    const tokenizer = new CharTokenizer(taskRuntime(topology).alphabet);
    const before = baseModelKey(topology, tokenizer);
    const revisions = CORPUS_REVISION as Record<string, number>;
    const revision = revisions.countdown!;
    revisions.countdown = revision + 1;
    try {
      expect(baseModelKey(topology, tokenizer)).not.toBe(before);
    } finally {
      revisions.countdown = revision;
    }
  });

  it('the bilingual corpus has a base model of its own, with the Chinese characters in its alphabet', async () => {
    const pipeline = await loadAnyPipeline('language-consistency');
    if (pipeline.kind !== 'recipe') throw new Error('language-consistency is a recipe');
    const { recipe } = pipeline;
    const stage = recipe.stages.find((s) => s.type === 'pretrain')!;
    const topology = pretrainTopology(recipe, stage as Extract<typeof stage, { type: 'pretrain' }>);
    const tokenizer = new CharTokenizer(taskRuntime(topology).alphabet);
    const plain = await loadPipeline('r1-zero-arithmetic');
    expect(baseModelKey(topology, tokenizer)).not.toBe(
      baseModelKey(plain, new CharTokenizer(taskRuntime(plain).alphabet)),
    );
    const { alphabet } = tokenizer.spec();
    for (const ch of ['进', '不', 'c', 'a', 'r', 'y', 'n', 'o']) expect(alphabet).toContain(ch);
    expect(tokenizer.encode('进1,不进')).toHaveLength(5); // one token per character
  });
});

describe('loading a pipeline from a path', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rxrl-pipeline-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, text: string): string => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };

  it('loads an ES module outside the project (.mts) and lists what its topology lacks, a field a line', async () => {
    const file = write('partial.mts', "export default { name: 'partial', description: 'x' };\n");
    const error = await loadAnyPipeline(file).catch((e: Error) => e);
    expect(error).toBeInstanceOf(Error);
    const lines = (error as Error).message.split('\n');
    expect(lines[0]).toBe(`${file} does not export a valid topology as default:`);
    expect(lines).toContain('  seed: Invalid input: expected number, received undefined');
    expect(lines).toContain('  model: Invalid input: expected object, received undefined');
  });

  it('checks a plain exported object across fields as defineTopology and defineRecipe do', async () => {
    const topology = write(
      'plain.mts',
      `import base from ${JSON.stringify(join(PIPELINES_DIR, 'r1-zero-arithmetic.ts'))};\n` +
        "export default { ...base, name: 'plain', model: { ...base.model, nHeads: 3 } };\n",
    );
    await expect(loadAnyPipeline(topology)).rejects.toThrow(
      `${topology}: Topology: model.dModel must be a multiple of model.nHeads`,
    );
    const recipe = write(
      'plain-recipe.mts',
      `import base from ${JSON.stringify(join(PIPELINES_DIR, 'r1-arithmetic.ts'))};\n` +
        'export default { ...base, stages: [...base.stages, base.stages[0]] };\n',
    );
    await expect(loadAnyPipeline(recipe)).rejects.toThrow(/is used twice/);
  });

  it('says how to make a .ts file outside any ES package load (rxrl describe), and what files a pipeline may be', async () => {
    const file = write('cjs.ts', "export default { name: 'cjs' };\n");
    // Under vitest every module is ESM; the command line loads through Node, where this one is CommonJS.
    const bin = fileURLToPath(new URL('../bin/rxrl.js', import.meta.url));
    const cli = spawnSync(process.execPath, [bin, 'describe', file], { encoding: 'utf8' });
    expect(cli.status).toBe(1);
    expect(cli.stderr).toContain(
      `error: ${file} loads as CommonJS, and a pipeline must be an ES module: name it .mts, or put a package.json with "type": "module" beside it`,
    );
    const json = write('topology.json', '{}');
    await expect(loadAnyPipeline(json)).rejects.toThrow(
      `${json} is not a TypeScript or JavaScript module (.ts, .mts, .js or .mjs)`,
    );
  });
});

describe("checks across a topology's fields", () => {
  const { name: _, ...input } = arithmetic;
  const variant = (change: Partial<TopologyInput>) => () =>
    defineTopology({ ...input, name: 'v', ...change });
  it('names each setting that cannot work with another', () => {
    expect(variant({ eval: { ...arithmetic.eval, prompts: 1000 } })).toThrow(
      `eval.prompts (1000) is more than the held-out set has, data.testPrompts (${arithmetic.data.testPrompts})`,
    );
    expect(variant({ sampling: { ...arithmetic.sampling, maxNewTokens: 500 } })).toThrow(
      `sampling.maxNewTokens (500) leaves no room for a prompt in the model's context, model.contextLength = ${arithmetic.model.contextLength}`,
    );
    expect(variant({ grpo: { ...arithmetic.grpo, epsLow: 1 } })).toThrow('grpo.epsLow (1) must be below 1');
    const overlong = (maxLength: number, buffer: number) =>
      variant({ rewards: [...arithmetic.rewards, { kind: 'overlong', maxLength, buffer }] });
    const i = arithmetic.rewards.length;
    expect(overlong(8, 16)).toThrow(`rewards[${i}] (overlong): buffer (16) is longer than maxLength (8)`);
    expect(overlong(1000, 8)).toThrow(`rewards[${i}] (overlong): it penalises from maxLength - buffer = 992`);
    expect(overlong(arithmetic.sampling.maxNewTokens, 8)).not.toThrow();
  });
});

describe("a topology written with TRL's names", () => {
  it("names rxrl's field for each, beside zod's complaint", () => {
    const { name: _, ...input } = arithmetic;
    const attempt = () =>
      defineTopology({
        ...input,
        name: 'trl-habits',
        grpo: { ...arithmetic.grpo, num_generations: 8, epsilon_high: 0.28 } as TopologyInput['grpo'],
        sampling: { ...arithmetic.sampling, max_completion_length: 64 } as TopologyInput['sampling'],
      });
    expect(attempt).toThrow(/Unrecognized keys: "num_generations", "epsilon_high"/);
    expect(attempt).toThrow("grpo.num_generations: TRL's or verl's num_generations is grpo.groupSize here");
    expect(attempt).toThrow("grpo.epsilon_high: TRL's or verl's epsilon_high is grpo.epsHigh here");
    expect(attempt).toThrow(
      "sampling.max_completion_length: TRL's or verl's max_completion_length is sampling.maxNewTokens here",
    );
  });

  it('names the field of the section the name was written in, and paths with [index]', () => {
    const { name: _, ...input } = arithmetic;
    const attempt = () =>
      defineTopology({
        ...input,
        name: 'trl-habits',
        eval: { ...arithmetic.eval, top_p: 0.9, num_generations: 8 } as TopologyInput['eval'],
        pretrain: { ...arithmetic.pretrain, learning_rate: 1e-3 } as TopologyInput['pretrain'],
        rewards: [
          { ...arithmetic.rewards[0]!, reward_weights: [1] } as unknown as TopologyInput['rewards'][number],
        ],
      });
    expect(attempt).toThrow("eval.top_p: TRL's or verl's top_p is eval.topP here");
    expect(attempt).toThrow("eval.num_generations: TRL's or verl's num_generations is eval.k here");
    expect(attempt).toThrow(
      "pretrain.learning_rate: TRL's or verl's learning_rate is pretrain.learningRate here",
    );
    expect(attempt).toThrow(
      "rewards[0].reward_weights: TRL's or verl's reward_weights is rewards[].weight here",
    );
  });
});
