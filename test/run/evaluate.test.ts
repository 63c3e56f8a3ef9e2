/** The R1 evaluation's aggregates, on completions written by hand (a stand-in generator, no model). */
import { describe, expect, it } from 'vitest';
import type { Rollout } from '../../schemas/index.ts';
import lc from '../../pipelines/language-consistency.ts';
import { evaluate, type EvalSettings } from '../../src/run/evaluate.ts';
import { taskRuntime } from '../../src/run/taskRuntime.ts';
import { loadPipeline } from '../../src/cli/pipelines.ts';
import type { GeneratorReply, GeneratorRequest } from '../../src/run/workers/protocol.ts';
import type { WorkerClient } from '../../src/run/workers/rpc.ts';

const runtime = taskRuntime(lc.topology);

/** A generator that answers a generate request with the given completions, k per prompt in order. */
function scripted(completions: (question: string, sample: number) => string) {
  return {
    request: async (request: GeneratorRequest) => {
      if (request.type !== 'generate') throw new Error(`unexpected ${request.type}`);
      const rollouts = request.prompts.flatMap((prompt, p) =>
        Array.from({ length: request.groupSize }, (_, i) => {
          const completion = completions(runtime.test[p]!.question, i);
          return {
            prompt,
            completion,
            completionTokenIds: Array.from(completion, () => 7),
            finishReason: 'eos',
          } as unknown as Rollout;
        }),
      );
      return { type: 'rollouts', rollouts, tokens: 0, seconds: 0, version: 0 } as GeneratorReply;
    },
  } as unknown as WorkerClient<GeneratorRequest, GeneratorReply>;
}

const settings: EvalSettings = { prompts: 4, k: 4, temperature: 0.6, topP: 0.95, maxNewTokens: 40 };
const sum = (question: string) => question.split('+').reduce((a, b) => a + Number(b), 0);

describe('evaluate: language consistency beside pass@1 and format', () => {
  it('is the mean share of target-language words over the samples that have words', async () => {
    // Per question: an English working, a Chinese one, a mixed one, and digits only (no words: not scored).
    const thinks = ['9+9=18 carry 1', '9+9=18 进1', '9+9=18 carry 1,1+1+1=3 进0', '9+9=18'];
    const generator = scripted((q, i) => `<think>${thinks[i]}</think><answer>${sum(q)}</answer>`);
    const en = await evaluate(generator, runtime, settings, 1);
    expect(en.pass1).toBe(1);
    expect(en.formatRate).toBe(1);
    expect(en.languageConsistency).toBeCloseTo((1 + 0 + 0.5) / 3, 12);
    expect(en.languageScored).toBe(0.75);
    const zh = await evaluate(generator, runtime, { ...settings, language: 'zh' }, 1);
    expect(zh.languageConsistency).toBeCloseTo((0 + 1 + 0.5) / 3, 12);
  });

  it('is null, not 0, when no chain of thought has a word', async () => {
    const generator = scripted((q) => `<think>7+8=15</think><answer>${sum(q) + 1}</answer>`);
    const result = await evaluate(generator, runtime, settings, 1);
    expect(result.pass1).toBe(0);
    expect(result.languageConsistency).toBeNull();
    expect(result.languageScored).toBe(0);
  });
});

describe('evaluate: step accuracy', () => {
  it('is the share of right arithmetic steps over all samples, and null when none writes a step', async () => {
    // Per question: two right steps, one right and one wrong, one wrong, and no steps at all.
    const thinks = ['9+9=18,1+1+1=3', '9+9=18,1+1+1=4', '9+9=17', 'no working'];
    const result = await evaluate(
      scripted((q, i) => `<think>${thinks[i]}</think><answer>${sum(q)}</answer>`),
      runtime,
      settings,
      1,
    );
    expect(result.stepAccuracy).toBeCloseTo(3 / 5, 12);
    const none = await evaluate(
      scripted((q) => `<answer>${sum(q)}</answer>`),
      runtime,
      settings,
      1,
    );
    expect(none.stepAccuracy).toBeNull();
  });
});

describe('cons@k votes on answers, not their spelling', () => {
  it('Countdown: expressions of the same numbers and value vote together, others apart', async () => {
    const countdown = taskRuntime(await loadPipeline('r1-zero-countdown'));
    const key = (answer: string) => countdown.voteKey(`<think>x</think><answer>${answer}</answer>`);
    expect(key('(8+5)*3')).toBe(key('3 * (5 + 8)'));
    expect(key('(8+5)*3 = 39')).toBe(key('3*(8+5)'));
    expect(key('(8+5)*3')).not.toBe(key('13*3')); // another value from other numbers
    expect(key('8*5-1')).not.toBe(key('(8+5)*3'));
    expect(key('not an expression')).toBe('notanexpression');
    expect(countdown.voteKey('no answer')).toBeNull();
    // Arithmetic keeps numbers: 0.5 and 1/2 are one answer.
    expect(runtime.voteKey('<answer>0.5</answer>')).toBe(runtime.voteKey('<answer>1/2</answer>'));
    // An empty answer is no answer: it casts no vote (two of them would outvote one right answer).
    expect(runtime.voteKey('<think>x</think><answer> </answer>')).toBeNull();
    expect(key('')).toBeNull();
  });
});
