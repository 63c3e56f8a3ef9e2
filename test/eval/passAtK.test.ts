import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { consensusCorrect, passAtK, summarizeEval } from '../../src/eval/passAtK.ts';

const choose = (n: number, k: number): number => {
  let r = 1;
  for (let i = 0; i < k; i++) r = (r * (n - i)) / (i + 1);
  return r;
};

describe('pass@k', () => {
  it('equals 1 - C(n-c,k)/C(n,k) computed directly', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 30 }), fc.nat(), fc.nat(), (n, c0, k0) => {
        const c = c0 % (n + 1);
        const k = (k0 % n) + 1;
        const direct = n - c < k ? 1 : 1 - choose(n - c, k) / choose(n, k);
        expect(passAtK(n, c, k)).toBeCloseTo(direct, 9);
      }),
    );
  });

  it('pass@1 is c/n; all wrong is 0; all right is 1', () => {
    expect(passAtK(16, 4, 1)).toBeCloseTo(0.25, 12);
    expect(passAtK(16, 0, 8)).toBe(0);
    expect(passAtK(16, 16, 3)).toBe(1);
    expect(() => passAtK(4, 5, 1)).toThrow(/0 <= c <= n/);
  });

  it('cons@k: the majority answer decides; no answers count as wrong', () => {
    expect(
      consensusCorrect([
        { answer: '4', correct: true },
        { answer: '5', correct: false },
        { answer: '4', correct: true },
      ]),
    ).toBe(true);
    expect(
      consensusCorrect([
        { answer: '5', correct: false },
        { answer: '5', correct: false },
        { answer: '4', correct: true },
      ]),
    ).toBe(false);
    expect(consensusCorrect([{ answer: null, correct: false }])).toBe(false);
  });

  it('summarises questions the R1 way', () => {
    const s = summarizeEval(
      [
        { answers: ['4', '4', '5', null], correct: [true, true, false, false] },
        { answers: ['7', '8', '8', '8'], correct: [true, false, false, false] },
      ],
      [1, 2],
    );
    expect(s.pass1).toBeCloseTo((0.5 + 0.25) / 2, 12);
    expect(s.passAtK[1]).toBeCloseTo(s.pass1, 12);
    expect(s.passAtK[2]).toBeCloseTo((passAtK(4, 2, 2) + passAtK(4, 1, 2)) / 2, 12);
    expect(s.consAtK).toBe(0.5);
    expect(s.pass1ByQuestion).toEqual([0.5, 0.25]);
  });
});
