import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import base from '../../pipelines/r1-zero-arithmetic.ts';
import { taskRuntime } from '../../src/run/taskRuntime.ts';
import { defineTopology } from '../../src/topology/topology.ts';
import { accuracyReward, countdownReward, type CountdownAnswer } from '../../src/rewards/rewards.ts';
import { arithmeticExamples } from '../../src/tasks/arithmetic.ts';
import { countdownExamples } from '../../src/tasks/countdown.ts';
import { heldOutOverlap, parseJsonlExamples } from '../../src/tasks/jsonl.ts';
import { applyTemplate, R1_ZERO_TEMPLATE, toPrompt } from '../../src/tasks/task.ts';

const signal = new AbortController().signal;

describe('arithmetic', () => {
  it('is fixed by its seed, with disjoint train and held-out sets and correct answers', () => {
    const train = arithmeticExamples('train', 500, 1);
    expect(arithmeticExamples('train', 500, 1)).toEqual(train);
    expect(arithmeticExamples('train', 500, 2)).not.toEqual(train);
    const test = arithmeticExamples('test', 200, 1);
    const trainQs = new Set(train.map((e) => e.question));
    expect(test.some((e) => trainQs.has(e.question))).toBe(false);
    // held-out of another seed is still disjoint from this train set
    expect(arithmeticExamples('test', 200, 9).some((e) => trainQs.has(e.question))).toBe(false);
    for (const e of [...train, ...test]) {
      const [a, b] = e.question.split('+').map(Number);
      expect(e.answer).toBe(String(a! + b!));
    }
  });

  it('holds out problems, not spellings: no held-out a+b has b+a in training, and none comes twice', () => {
    const problem = (q: string) =>
      q
        .split('+')
        .map(Number)
        .sort((x, y) => x - y)
        .join('+');
    const train = new Set(arithmeticExamples('train', 6000, 1).map((e) => problem(e.question)));
    const test = arithmeticExamples('test', 400, 1).map((e) => problem(e.question));
    expect(test.filter((p) => train.has(p))).toEqual([]);
    expect(new Set(test).size).toBe(test.length);
  });

  it('makes multiplication questions when asked', () => {
    const ex = arithmeticExamples('train', 50, 3, { digits: 2, operations: ['*'] });
    for (const e of ex) {
      const [a, b] = e.question.split('*').map(Number);
      expect(e.answer).toBe(String(a! * b!));
    }
  });
});

describe('countdown', () => {
  it('every question is solvable, and the reward scores a known solution 1', () => {
    const ex = countdownExamples('train', 50, 1, { numbers: 3, maxNumber: 20 });
    expect(countdownExamples('train', 50, 1, { numbers: 3, maxNumber: 20 })).toEqual(ex);
    const reward = countdownReward();
    for (const e of ex) {
      const { numbers, target } = e.answer as CountdownAnswer;
      expect(numbers).toHaveLength(3);
      expect(target).toBeGreaterThan(0);
      // brute-force a solution to prove solvability independently of the generator
      const [a, b, c] = numbers as [number, number, number];
      const perms = [
        [a, b, c],
        [a, c, b],
        [b, a, c],
        [b, c, a],
        [c, a, b],
        [c, b, a],
      ];
      const ops = ['+', '-', '*', '/'];
      const exprs = perms.flatMap(([x, y, z]) =>
        ops.flatMap((o1) =>
          ops.flatMap((o2) => [`(${x} ${o1} ${y}) ${o2} ${z}`, `${x} ${o1} (${y} ${o2} ${z})`]),
        ),
      );
      const solution = exprs.find(
        (expr) =>
          reward.score(
            {
              prompt: toPrompt('countdown', e, '{prompt}'),
              completion: `<answer>${expr}</answer>`,
              completionTokens: 1,
              finishReason: 'eos',
            },
            signal,
          ) === 1,
      );
      expect(solution, e.question).toBeDefined();
    }
  });

  it('train and held-out sets are disjoint, as problems: the same numbers in another order and target are one', () => {
    const problem = (e: { answer: unknown }) => {
      const { numbers, target } = e.answer as CountdownAnswer;
      return `${[...numbers].sort((x, y) => x - y).join(',')}->${target}`;
    };
    const train = new Set(countdownExamples('train', 4000, 1).map(problem));
    const test = countdownExamples('test', 128, 1).map(problem);
    expect(test.filter((p) => train.has(p))).toEqual([]);
    expect(new Set(test).size).toBe(test.length);
  });
});

describe('templates and prompts', () => {
  it('applies the R1-Zero template', () => {
    const text = applyTemplate(R1_ZERO_TEMPLATE, '12+5');
    expect(text).toMatch(/^A conversation between User and Assistant\./);
    expect(text.endsWith('User: 12+5. Assistant:')).toBe(true);
    expect(() => applyTemplate('no placeholder', 'x')).toThrow(/no \{prompt\} placeholder/);
  });

  it('prompts carry the answer for the verifier', () => {
    const [e] = arithmeticExamples('train', 1, 1);
    const p = toPrompt('arithmetic', e!, 'User: {prompt}. Assistant:', '@0');
    expect(p.id).toBe(`${e!.id}@0`);
    expect(
      accuracyReward().score(
        {
          prompt: p,
          completion: `<answer>${String(e!.answer)}</answer>`,
          completionTokens: 1,
          finishReason: 'eos',
        },
        signal,
      ),
    ).toBe(1);
  });
});

describe('JSONL data sets', () => {
  it('warns when test prompts are also training prompts, naming them', () => {
    const train = parseJsonlExamples(
      ['{"id":"a","prompt":"What is 2+2?","answer":4}', '{"id":"b","prompt":"3*3","answer":9}'].join('\n'),
      'train.jsonl',
    );
    const test = parseJsonlExamples(
      ['{"id":"t1","prompt":"  What is  2+2? ","answer":4}', '{"id":"t2","prompt":"5-1","answer":4}'].join(
        '\n',
      ),
      'test.jsonl',
    );
    const files = { train: 'train.jsonl', test: 'test.jsonl' };
    expect(heldOutOverlap(train, test, files)).toBe(
      '1 of the 2 test prompts of test.jsonl are also training prompts in train.jsonl: t1 (as a). ' +
        'Held-out figures count them as unseen; remove them from one of the files.',
    );
    expect(heldOutOverlap(train, test.slice(1), files)).toBeUndefined();

    // A run's task runtime says so when it loads the files.
    const dir = mkdtempSync(join(tmpdir(), 'rxrl-jsonl-'));
    try {
      writeFileSync(join(dir, 'train.jsonl'), '{"prompt":"1+1","answer":2}\n{"prompt":"2+5","answer":7}\n');
      writeFileSync(join(dir, 'test.jsonl'), '{"prompt":"2+5","answer":7}\n');
      const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
      try {
        const topology = defineTopology({
          ...base,
          task: { kind: 'jsonl', train: join(dir, 'train.jsonl'), test: join(dir, 'test.jsonl') },
        });
        taskRuntime(topology);
        expect(warn).toHaveBeenCalledWith(
          expect.stringMatching(
            /^Warning: 1 of the 1 test prompts of .*test\.jsonl are also training prompts/,
          ),
        );
        // Once per pair of files: a recipe builds a runtime per stage.
        taskRuntime(topology);
        expect(warn).toHaveBeenCalledTimes(1);
      } finally {
        warn.mockRestore();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("keeps a row's meta, and its prompt hands it to rewards", () => {
    const [e] = parseJsonlExamples(
      '{"id":"q1","prompt":"2+2","answer":4,"meta":{"difficulty":"easy","source":"gsm"}}\n',
      'd.jsonl',
    );
    expect(e).toEqual({ id: 'q1', question: '2+2', answer: 4, meta: { difficulty: 'easy', source: 'gsm' } });
    expect(toPrompt('jsonl', e!, '{prompt}').meta).toEqual({ difficulty: 'easy', source: 'gsm' });
    expect(toPrompt('jsonl', { id: 'q2', question: '1+1', answer: 2 }, '{prompt}')).not.toHaveProperty(
      'meta',
    );
  });

  it('reads records and names every bad line with its reason', () => {
    const good = '{"prompt":"2+2","answer":"4"}\n\n{"id":"q2","prompt":"3+3","answer":6}\n';
    expect(parseJsonlExamples(good, 'data.jsonl')).toEqual([
      { id: 'data.jsonl#1', question: '2+2', answer: '4' },
      { id: 'q2', question: '3+3', answer: 6 },
    ]);
    const bad = [
      '{"prompt":"2+2","answer":"4"}',
      '{"prompt":"2+2"',
      '{"prompt":"","answer":1}',
      '{"prompt":"x","answer":1,"extra":true}',
      '[1]',
      '{"prompt":"2^64+2","answer":18446744073709551618}',
    ].join('\n');
    let error: AggregateError | undefined;
    try {
      parseJsonlExamples(bad, 'data.jsonl');
    } catch (err) {
      error = err as AggregateError;
    }
    expect(error?.message).toMatch(/5 bad line\(s\) in data\.jsonl/);
    expect(error?.message).toMatch(/data\.jsonl:2: not valid JSON/);
    expect(error?.message).toMatch(/data\.jsonl:3: prompt: .*>=1 characters/);
    expect(error?.message).toMatch(/data\.jsonl:4: .*Unrecognized key.*extra/);
    expect(error?.message).toMatch(/data\.jsonl:5: .*expected object/);
    expect(error?.message).toMatch(/data\.jsonl:6: .*past 2\^53 .*quote it as a string/);
  });
});
