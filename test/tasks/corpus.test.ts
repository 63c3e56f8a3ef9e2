import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { evaluateExpression } from '../../src/rewards/expression.ts';
import { accuracyReward, countdownReward, formatReward } from '../../src/rewards/rewards.ts';
import {
  additionColumns,
  additionWorking,
  columnStep,
  correctAdditionCompletion,
  countdownChains,
  countdownDrill,
  noisyAdditionCompletion,
  noisyCountdownCompletion,
  reasoningAlphabet,
  type ReasoningLanguage,
} from '../../src/tasks/corpus.ts';
import { defineTopology } from '../../src/topology/topology.ts';
import base from '../../pipelines/r1-zero-arithmetic.ts';
import countdown from '../../pipelines/r1-zero-countdown.ts';
import { countdownExamples } from '../../src/tasks/countdown.ts';
import type { CountdownAnswer } from '../../src/rewards/rewards.ts';
import { seededUniform } from '../../src/random.ts';
import { prompt } from '../fixtures.ts';

const signal = new AbortController().signal;
const score = (completion: string, answer: string) => {
  const input = {
    prompt: { ...prompt('p'), answer },
    completion,
    completionTokens: 1,
    finishReason: 'eos' as const,
  };
  return { accuracy: accuracyReward().score(input, signal), format: formatReward().score(input, signal) };
};

describe('pretraining corpus', () => {
  it('writes column-by-column working with carries', () => {
    expect(additionWorking(57, 68, () => 0)).toEqual({ think: '7+8=15,5+6+1=12', answer: '125' });
    expect(additionWorking(5, 4, () => 0)).toEqual({ think: '5+4=9', answer: '9' });
  });

  it('careful working always gives the right answer', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 9999 }), fc.integer({ min: 0, max: 9999 }), (a, b) => {
        expect(additionWorking(a, b, () => 0).answer).toBe(String(a + b));
        expect(score(correctAdditionCompletion(a, b), String(a + b))).toEqual({ accuracy: 1, format: 1 });
      }),
    );
  });

  it('noisy documents are right and well formatted about as often as the noise says', () => {
    const rand = seededUniform(3);
    let right = 0;
    let formatted = 0;
    const n = 4000;
    for (let i = 0; i < n; i++) {
      const a = 10 + Math.floor(rand() * 90);
      const b = 10 + Math.floor(rand() * 90);
      const s = score(
        noisyAdditionCompletion(a, b, rand, { columnAccuracy: 0.5, brokenFormat: 0.25 }),
        String(a + b),
      );
      right += s.accuracy === 1 ? 1 : 0;
      formatted += s.format === 1 ? 1 : 0;
    }
    // two columns right with probability 0.25; a wrong column can still land right only rarely
    expect(right / n).toBeGreaterThan(0.2);
    expect(right / n).toBeLessThan(0.35);
    expect(formatted / n).toBeCloseTo(0.75, 1);
  });
});

describe('worded, bilingual working (pretrain.reasoningLanguages)', () => {
  const noise = { columnAccuracy: 0.5, brokenFormat: 0.25 };
  const mixed = { en: 0.5, zh: 0.5 };
  /** The working without its words: what the plain corpus writes. */
  const unworded = (text: string) => text.replace(/ (?:carry \d+|no carry|进\d+|不进)(?=,|<|$)/g, '');
  /** Each step of a document's working: its arithmetic, language and whether the words match its sum. */
  const steps = (doc: string) => {
    const think = /^(?:<think>)?(.*?)(?:<\/think>|<answer>)/.exec(doc)?.[1] ?? '';
    return think.split(',').map((step) => {
      const m = /^(\d)\+(\d)(?:\+(\d))?=(\d+) (carry (\d+)|no carry|进(\d+)|不进)$/.exec(step);
      if (!m) throw new Error(`not a worded step: ${step} (in ${doc})`);
      const [, x, y, carryIn, sum, words, enCarry, zhCarry] = m;
      const language: ReasoningLanguage = words!.startsWith('carry') || words === 'no carry' ? 'en' : 'zh';
      const carry = Number(enCarry ?? zhCarry ?? 0);
      return {
        language,
        right: Number(sum) === Number(x) + Number(y) + Number(carryIn ?? 0),
        wordsMatch: carry === Math.floor(Number(sum) / 10),
      };
    });
  };

  it('words each step in its language, after the same sum', () => {
    const [first, second] = additionColumns(57, 68, () => 0).columns;
    expect(columnStep(first!)).toBe('7+8=15');
    expect(columnStep(first!, 'en')).toBe('7+8=15 carry 1');
    expect(columnStep(first!, 'zh')).toBe('7+8=15 进1');
    expect(columnStep(second!, 'zh')).toBe('5+6+1=12 进1');
    const [, tens] = additionColumns(34, 25, () => 0).columns;
    expect(columnStep(tens!, 'en')).toBe('3+2=5 no carry');
    expect(columnStep(tens!, 'zh')).toBe('3+2=5 不进');
    expect(
      additionWorking(
        57,
        68,
        () => 0,
        (i) => (i === 0 ? 'en' : 'zh'),
      ),
    ).toEqual({
      think: '7+8=15 carry 1,5+6+1=12 进1',
      answer: '125',
    });
    expect(reasoningAlphabet(mixed)).toBe('acnory不进');
    expect(reasoningAlphabet({ en: 1 })).toBe('acnory');
    expect(reasoningAlphabet({ en: 0, zh: 1 })).toBe('不进');
  });

  it('has the arithmetic of the plain working, slips included, whatever the languages', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 9999 }),
        fc.integer({ min: 0, max: 9999 }),
        fc.array(fc.integer({ min: -2, max: 2 }), { minLength: 5, maxLength: 5 }),
        fc.array(fc.constantFrom<ReasoningLanguage>('en', 'zh'), { minLength: 5, maxLength: 5 }),
        (a, b, slips, languages) => {
          const slip = (seq: number[]) => () => seq.shift()!;
          const plain = additionWorking(a, b, slip([...slips]));
          const worded = additionWorking(a, b, slip([...slips]), (i) => languages[i]!);
          expect(worded.answer).toBe(plain.answer);
          expect(unworded(worded.think)).toBe(plain.think);
          for (const step of steps(`<think>${worded.think}</think>`)) expect(step.wordsMatch).toBe(true);
        },
      ),
    );
  });

  it('noisy documents: the same draws as the plain corpus, then a language per step; deterministic by seed', () => {
    for (let seed = 0; seed < 500; seed++) {
      const [a, b] = [10 + (seed % 90), 99 - (seed % 73)];
      const plain = noisyAdditionCompletion(a, b, seededUniform(seed), noise);
      const worded = noisyAdditionCompletion(a, b, seededUniform(seed), noise, mixed);
      expect(unworded(worded)).toBe(plain);
      expect(noisyAdditionCompletion(a, b, seededUniform(seed), noise, mixed)).toBe(worded);
    }
    const corpus = (seed: number) => {
      const rand = seededUniform(seed);
      return Array.from({ length: 50 }, () => noisyAdditionCompletion(57, 68, rand, noise, mixed));
    };
    expect(corpus(7)).toEqual(corpus(7));
    expect(corpus(7)).not.toEqual(corpus(8));
  });

  it('mixes the languages by their weights, and each language is as often right as the other', () => {
    const rand = seededUniform(11);
    const tally = { en: { steps: 0, right: 0 }, zh: { steps: 0, right: 0 } };
    let mixedDocs = 0;
    let worded = 0;
    for (let i = 0; i < 4000; i++) {
      const doc = noisyAdditionCompletion(10 + (i % 90), 10 + ((i * 7) % 90), rand, noise, mixed);
      if (doc.startsWith('<answer>')) continue; // the broken format without a working
      worded++;
      const s = steps(doc);
      for (const step of s) {
        expect(step.wordsMatch).toBe(true);
        tally[step.language].steps++;
        if (step.right) tally[step.language].right++;
      }
      if (new Set(s.map((step) => step.language)).size > 1) mixedDocs++;
    }
    const total = tally.en.steps + tally.zh.steps;
    expect(tally.zh.steps / total).toBeCloseTo(0.5, 1);
    // Two steps each: about half the documents mix the languages.
    expect(mixedDocs / worded).toBeGreaterThan(0.4);
    expect(mixedDocs / worded).toBeLessThan(0.6);
    const rate = (l: ReasoningLanguage) => tally[l].right / tally[l].steps;
    expect(rate('en')).toBeCloseTo(noise.columnAccuracy, 1);
    expect(rate('zh')).toBeCloseTo(noise.columnAccuracy, 1);
    expect(Math.abs(rate('en') - rate('zh'))).toBeLessThan(0.04);

    const skewed = seededUniform(12);
    let zh = 0;
    let n = 0;
    for (let i = 0; i < 2000; i++) {
      const doc = noisyAdditionCompletion(57, 68, skewed, { ...noise, brokenFormat: 0 }, { en: 1, zh: 3 });
      for (const step of steps(doc)) {
        n++;
        if (step.language === 'zh') zh++;
      }
    }
    expect(zh / n).toBeCloseTo(0.75, 1);
    const english = noisyAdditionCompletion(
      57,
      68,
      seededUniform(1),
      { ...noise, brokenFormat: 0 },
      { en: 1 },
    );
    expect(steps(english).every((step) => step.language === 'en')).toBe(true);
  });

  it('is a corpus option of the arithmetic topology: validated, and only for addition', () => {
    const t = defineTopology({
      ...base,
      pretrain: { ...base.pretrain, reasoningLanguages: { en: 1, zh: 1 } },
    });
    expect(t.pretrain.reasoningLanguages).toEqual({ en: 1, zh: 1 });
    expect(defineTopology(base).pretrain).not.toHaveProperty('reasoningLanguages');
    expect(() =>
      defineTopology({ ...base, pretrain: { ...base.pretrain, reasoningLanguages: { en: 0 } } }),
    ).toThrow(/positive weight[\s\S]*pretrain.reasoningLanguages/);
    expect(() =>
      defineTopology({ ...base, pretrain: { ...base.pretrain, reasoningLanguages: { fr: 1 } as never } }),
    ).toThrow(/reasoningLanguages/);
    expect(() =>
      defineTopology({
        ...countdown,
        pretrain: { ...countdown.pretrain, reasoningLanguages: { en: 1 } },
      }),
    ).toThrow(/reasoningLanguages words the addition corpus/);
  });
});

describe('Countdown pretraining corpus', () => {
  it('chains use each number once and their expression evaluates to the value the steps reach', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 3, maxLength: 4 }), (numbers) => {
        const chains = countdownChains(numbers);
        expect(chains.length).toBeGreaterThan(0);
        for (const c of chains) {
          const parsed = evaluateExpression(c.expression)!;
          expect(parsed.value).toBe(c.value);
          expect([...parsed.numbers].sort()).toEqual([...numbers].sort());
          expect(c.steps).toHaveLength(numbers.length - 1);
          expect(c.steps[c.steps.length - 1]!.endsWith(`=${c.value}`)).toBe(true);
        }
      }),
      { numRuns: 15 },
    );
    expect(countdownChains([8, 5, 3]).map((c) => c.expression)).toContain('(8+5)*3');
  });

  it('solves at about the solve rate and breaks the format at its rate', () => {
    const examples = countdownExamples('train', 300, 1, { numbers: 3, maxNumber: 10 });
    const rand = seededUniform(5);
    const reward = countdownReward(0);
    let solved = 0;
    let formatted = 0;
    for (const e of examples) {
      const { numbers, target } = e.answer as CountdownAnswer;
      const completion = noisyCountdownCompletion(numbers, target, rand, {
        solveRate: 0.3,
        brokenFormat: 0.2,
      });
      const input = {
        prompt: { ...prompt('p'), answer: e.answer },
        completion,
        completionTokens: 1,
        finishReason: 'eos' as const,
      };
      solved += reward.score(input, signal) === 1 ? 1 : 0;
      formatted += formatReward().score(input, signal) === 1 ? 1 : 0;
    }
    // 0.3 of the well-formatted documents aim at the target; a random attempt hits it now and then
    expect(solved / examples.length).toBeGreaterThan(0.2);
    expect(solved / examples.length).toBeLessThan(0.45);
    expect(formatted / examples.length).toBeCloseTo(0.8, 1);
  });

  it('multi-attempt documents: 1 to maxAttempts attempts of right arithmetic, stopping at the first that hits, answering with the last', () => {
    const counts = new Map<number, number>();
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 10 }), { minLength: 3, maxLength: 3 }),
        fc.nat(),
        fc.integer(),
        (numbers, pick, seed) => {
          // A target some attempts reach, so that random attempts hit it now and then.
          const chains = countdownChains(numbers);
          const target = chains[pick % chains.length]!.value;
          const noise = { solveRate: 0.3, brokenFormat: 0, maxAttempts: 3 };
          const completion = noisyCountdownCompletion(numbers, target, seededUniform(seed), noise);
          expect(noisyCountdownCompletion(numbers, target, seededUniform(seed), noise)).toBe(completion);
          const m = /^<think>(.*)<\/think><answer>(.*)<\/answer>$/.exec(completion);
          expect(m, completion).not.toBeNull();
          const attempts = m![1]!.split(' ');
          expect(attempts.length).toBeGreaterThanOrEqual(1);
          expect(attempts.length).toBeLessThanOrEqual(3);
          counts.set(attempts.length, (counts.get(attempts.length) ?? 0) + 1);
          const values = attempts.map((attempt) => {
            const steps = attempt.split(',');
            expect(steps).toHaveLength(2);
            let value = NaN;
            for (const step of steps) {
              const s = /^(-?\d+)([-+*/])(\d+)=(-?\d+)$/.exec(step);
              expect(s, step).not.toBeNull();
              const [a, op, b, c] = [Number(s![1]), s![2], Number(s![3]), Number(s![4])];
              expect(op === '+' ? a + b : op === '-' ? a - b : op === '*' ? a * b : a / b).toBe(c);
              value = c;
            }
            return value;
          });
          // Only the last attempt may reach the target, and the answer is the last attempt's expression.
          expect(values.slice(0, -1)).not.toContain(target);
          expect(evaluateExpression(m![2]!)?.value).toBe(values[values.length - 1]);
        },
      ),
      { numRuns: 200 },
    );
    // Every length from 1 to 3 occurs.
    expect([...counts.keys()].sort()).toEqual([1, 2, 3]);
  });

  it('one-attempt documents are what they were before maxAttempts existed', () => {
    const a = noisyCountdownCompletion([7, 10, 2], 35, seededUniform(9), {
      solveRate: 0.3,
      brokenFormat: 0.2,
    });
    const b = noisyCountdownCompletion([7, 10, 2], 35, seededUniform(9), {
      solveRate: 0.3,
      brokenFormat: 0.2,
      maxAttempts: 1,
    });
    expect(b).toBe(a);
    expect(a).not.toContain(' ');
  });

  it("drill rows are right arithmetic on the question's numbers, fill the row, and follow the seed", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 10 }), { minLength: 3, maxLength: 3 }),
        fc.integer(),
        fc.integer({ min: 20, max: 200 }),
        (numbers, seed, maxChars) => {
          const text = countdownDrill(numbers, seededUniform(seed), maxChars);
          expect(countdownDrill(numbers, seededUniform(seed), maxChars)).toBe(text);
          expect(text.length).toBeLessThanOrEqual(maxChars);
          // The next step would not have fitted: a step is at most "1000/10=100" (11 characters) here.
          expect(text.length).toBeGreaterThan(maxChars - 12);
          for (const step of text.split(',')) {
            const m = /^(-?\d+)([-+*/])(\d+)=(-?\d+)$/.exec(step);
            expect(m, step).not.toBeNull();
            const [a, op, b, c] = [Number(m![1]), m![2], Number(m![3]), Number(m![4])];
            // Every step brings in one of the question's numbers.
            expect(numbers).toContain(b);
            expect(op === '+' ? a + b : op === '-' ? a - b : op === '*' ? a * b : a / b).toBe(c);
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  it('attempts is for Countdown only', () => {
    expect(() => defineTopology({ ...base, pretrain: { ...base.pretrain, attempts: 3 } })).toThrow(
      /pretrain.attempts writes several Countdown attempts per document; it needs task \{ kind: "countdown" \}, not "arithmetic"/,
    );
  });

  it('drill is for Countdown only', () => {
    expect(() => defineTopology({ ...base, pretrain: { ...base.pretrain, drill: 0.5 } })).toThrow(
      /pretrain.drill mixes Countdown arithmetic into the corpus; it needs task \{ kind: "countdown" \}, not "arithmetic"/,
    );
    expect(
      defineTopology({ ...countdown, pretrain: { ...countdown.pretrain, drill: 0.5 } }).pretrain.drill,
    ).toBe(0.5);
  });
});
