import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadPipeline, PIPELINES_DIR } from '../src/cli/pipelines.ts';
import { CharTokenizer } from '../src/policy/tokenizer.ts';
import { taskRuntime } from '../src/run/taskRuntime.ts';

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
      }
    },
  );
});
