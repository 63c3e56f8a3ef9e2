import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { evaluateExpression } from '../../src/rewards/expression.ts';
import { accuracyReward, countdownReward, formatReward } from '../../src/rewards/rewards.ts';
import {
  additionWorking,
  correctAdditionCompletion,
  countdownChains,
  noisyAdditionCompletion,
  noisyCountdownCompletion,
} from '../../src/tasks/corpus.ts';
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
});
