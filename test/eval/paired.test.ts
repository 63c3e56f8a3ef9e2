import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { pairedBootstrap } from '../../src/eval/paired.ts';

describe('pairedBootstrap', () => {
  it('counts the questions that rose, fell and stayed, and takes the mean difference', () => {
    const r = pairedBootstrap([0.5, 0.25, 0, 1], [0.75, 0, 0, 1], { resamples: 200 });
    expect([r.better, r.worse, r.same, r.questions]).toEqual([1, 1, 2, 4]);
    expect(r.difference).toBeCloseTo(0, 12);
  });

  it('gives a point interval for a constant shift, and no resample at or below zero for a gain', () => {
    const baseline = [0, 0.125, 0.5, 0.25, 0.875];
    const r = pairedBootstrap(
      baseline,
      baseline.map((b) => b + 0.125),
    );
    expect([r.low, r.difference, r.high]).toEqual([0.125, 0.125, 0.125].map((x) => expect.closeTo(x, 12)));
    expect(r.atOrBelowZero).toBe(0);
  });

  it('puts the mean difference inside its interval, and is fixed by its seed', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 8 })), {
          minLength: 1,
          maxLength: 40,
        }),
        fc.integer({ min: 0, max: 1000 }),
        (pairs, seed) => {
          const a = pairs.map(([x]) => x / 8);
          const b = pairs.map(([, y]) => y / 8);
          const r = pairedBootstrap(a, b, { resamples: 400, seed });
          // The bootstrap means are averages of the differences, so they lie within their range.
          const diffs = b.map((y, i) => y - a[i]!);
          expect(r.low).toBeGreaterThanOrEqual(Math.min(...diffs) - 1e-12);
          expect(r.high).toBeLessThanOrEqual(Math.max(...diffs) + 1e-12);
          expect(r.low).toBeLessThanOrEqual(r.high);
          expect(r.better + r.worse + r.same).toBe(pairs.length);
          expect(pairedBootstrap(a, b, { resamples: 400, seed })).toEqual(r);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('separates a real gain from noise: a gain on most questions has an interval above zero, a coin flip not', () => {
    const baseline = Array.from({ length: 100 }, (_, i) => ((i % 4) + 1) / 8);
    const gain = pairedBootstrap(
      baseline,
      baseline.map((b, i) => b + (i % 5 === 0 ? 0 : 0.125)),
    );
    expect(gain.low).toBeGreaterThan(0);
    const flip = pairedBootstrap(
      baseline,
      baseline.map((b, i) => b + (i % 2 === 0 ? 0.125 : -0.125)),
    );
    expect(flip.low).toBeLessThan(0);
    expect(flip.high).toBeGreaterThan(0);
  });

  it('refuses evaluations of different questions, none, or a bad resample count', () => {
    expect(() => pairedBootstrap([0.5], [0.5, 1])).toThrow(
      /cover 1 and 2 questions; compare them on the same questions/,
    );
    expect(() => pairedBootstrap([], [])).toThrow(/no questions/);
    expect(() => pairedBootstrap([1], [1], { resamples: 0 })).toThrow(
      /resamples must be an integer > 0, got 0/,
    );
  });
});
