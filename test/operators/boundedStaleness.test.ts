import { concatMap, EMPTY, from, lastValueFrom, map, timer } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { BatchSample } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { boundedStaleness, StalenessGate } from '../../src/operators/boundedStaleness.ts';
import { makeGradientBatch, toBatchSample } from '../../src/operators/toGradientBatches.ts';
import {
  DynamicSamplingBudget,
  nextRoundPrompts,
  StalenessAdmission,
} from '../../src/scheduling/admission.ts';
import { advantaged } from '../fixtures.ts';

const newScheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
const batchAt = (name: string, ...versions: number[]) =>
  makeGradientBatch(
    versions.map((v, i) => toBatchSample(advantaged(name, i, 1, { version: v, groupSize: versions.length }))),
  );
const ids = map((b: { samples: BatchSample[] }) => b.samples.map((s) => s.rolloutId).join(','));

describe('StalenessGate', () => {
  it("judges a batch as the learner takes it: one that waited behind another's training is that much older", async () => {
    const metrics = new Metrics({ run: 't' });
    const gate = new StalenessGate({ eta: 0, metrics });
    let version = 0;
    const trained: string[] = [];
    // Three batches of version 0 arrive at once; each step takes a moment and makes a new version.
    await lastValueFrom(
      from([batchAt('A', 0), batchAt('B', 0), batchAt('C', 1)]).pipe(
        concatMap((batch) => {
          const admitted = gate.admit(batch, version);
          if (!admitted) return EMPTY;
          return timer(5).pipe(
            map(() => {
              trained.push(`${admitted.samples[0]!.rolloutId}@${version}`);
              version++;
            }),
          );
        }),
      ),
      { defaultValue: undefined },
    );
    // B waited for A's step: at version 1 it is one version old (eta 0). C, of version 1, is fresh then.
    expect(trained).toEqual(['A/0@0', 'C/0@1']);
    expect(metrics.snapshot()).toMatchObject({ 'drops.samples{reason=stale}': 1, 'staleness.admitted': 2 });
  });
});

describe('boundedStaleness', () => {
  it('lets through samples at most eta versions old and drops the rest, counted', () => {
    const stale: BatchSample[] = [];
    const metrics = new Metrics({ run: 't' });
    newScheduler().run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const versions = hot('0-----1-----2-----3---', { 0: 0, 1: 1, 2: 2, 3: 3 });
      const batches = cold('--A-----B-----C-----D-|', {
        A: batchAt('A', 0, 0),
        B: batchAt('B', 0, 1),
        C: batchAt('C', 0, 1),
        D: batchAt('D', 1, 1),
      });
      const out = batches.pipe(
        boundedStaleness({ eta: 1, versions, metrics, onStale: (s) => stale.push(...s) }),
        ids,
      );
      expectObservable(out).toBe('--a-----b-----c-------|', { a: 'A/0,A/1', b: 'B/0,B/1', c: 'C/1' });
      expectSubscriptions(batches.subscriptions).toBe('^---------------------!');
    });
    expect(stale.map((s) => s.rolloutId)).toEqual(['C/0', 'D/0', 'D/1']);
    expect(metrics.snapshot()).toMatchObject({ 'drops.samples{reason=stale}': 3, 'staleness.admitted': 5 });
  });

  it('an onStale that throws ends the stream with its error instead of completing', () => {
    const failure = new Error('onStale failed');
    newScheduler().run(({ cold, hot, expectObservable }) => {
      const versions = hot('0--3----', { 0: 0, 3: 3 });
      const out = cold('-A---B-|', { A: batchAt('A', 0), B: batchAt('B', 0) }).pipe(
        boundedStaleness({
          eta: 1,
          versions,
          onStale: () => {
            throw failure;
          },
        }),
        ids,
      );
      expectObservable(out).toBe('-a---#', { a: 'A/0' }, failure);
    });
  });

  it('eta = 0 admits only samples of the current version (synchronous training)', () => {
    newScheduler().run(({ cold, hot, expectObservable }) => {
      const versions = hot('0--1----', { 0: 0, 1: 1 });
      const out = cold('-A---B-|', { A: batchAt('A', 0), B: batchAt('B', 0) }).pipe(
        boundedStaleness({ eta: 0, versions }),
        ids,
      );
      expectObservable(out).toBe('-a-----|', { a: 'A/0' });
    });
  });

  it('passes errors of either input through and unsubscribes from both', () => {
    newScheduler().run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const versions = hot('0--#', { 0: 0 }, new Error('learner died'));
      const batches = cold('-A----', { A: batchAt('A', 0) });
      expectObservable(batches.pipe(boundedStaleness({ eta: 2, versions }), ids)).toBe(
        '-a-#',
        { a: 'A/0' },
        new Error('learner died'),
      );
      expectSubscriptions(batches.subscriptions).toBe('^--!');
      const v2 = hot('0-----', { 0: 0 });
      const b2 = cold('-A----', { A: batchAt('A', 0) });
      expectObservable(b2.pipe(boundedStaleness({ eta: 2, versions: v2 }), ids), '^-!').toBe('-a-', {
        a: 'A/0',
      });
      expectSubscriptions(v2.subscriptions).toBe('^-!');
    });
  });

  it('rejects a negative or fractional eta', () => {
    for (const eta of [-1, 0.5])
      expect(() => boundedStaleness({ eta, versions: newScheduler().createColdObservable('') })).toThrow(
        `eta must be an integer >= 0, got ${eta}`,
      );
  });
});

describe('StalenessAdmission', () => {
  it('eta = 0: one step of samples per version, generation waits for the learner', () => {
    const a = new StalenessAdmission({ eta: 0, samplesPerStep: 4, maxConcurrent: 100 });
    expect(a.capacity).toBe(4);
    a.started(4);
    expect(a.capacity).toBe(0);
    a.finished(4);
    expect(a.capacity).toBe(0);
    a.trained(4);
    expect(a.capacity).toBe(4);
  });

  it('counts the samples each step trained: a step that lost stale samples does not let generation run further ahead', () => {
    const a = new StalenessAdmission({ eta: 1, samplesPerStep: 4, maxConcurrent: 100 });
    a.started(8);
    a.finished(8);
    a.discarded(2); // two of the first batch were stale
    a.trained(2); // so its step trained the other two
    // Waiting: 8 - 2 - 2 = 4 samples; two steps' worth may be: 4 more (crediting the step with 4: 6).
    expect(a.capacity).toBe(4);
  });

  it('eta = 2 lets generation run up to three steps ahead, bounded by maxConcurrent', () => {
    const a = new StalenessAdmission({ eta: 2, samplesPerStep: 4, maxConcurrent: 8 });
    expect(a.capacity).toBe(8);
    a.started(8);
    expect(a.capacity).toBe(0);
    a.finished(8);
    expect(a.capacity).toBe(4); // (2 + 0 + 1) * 4 - 8
    a.started(4);
    a.finished(4);
    expect(a.capacity).toBe(0);
    a.discarded(4); // a zero-variance group gives its place back
    expect(a.capacity).toBe(4);
    expect(() => a.started(5)).toThrow(/started 5 samples with capacity 4/);
  });

  it('a generator that only starts what the capacity allows never produces a sample older than eta', () => {
    for (const eta of [0, 1, 2, 4]) {
      const B = 4;
      const a = new StalenessAdmission({ eta, samplesPerStep: B, maxConcurrent: 1000 });
      const queue: number[] = []; // versions of generated samples, in order
      let version = 0;
      let maxStaleness = 0;
      for (let round = 0; round < 50; round++) {
        const n = a.capacity;
        a.started(n);
        a.finished(n);
        for (let i = 0; i < n; i++) queue.push(version);
        // the learner takes one step's worth, in order
        const step = queue.splice(0, B);
        for (const v of step) maxStaleness = Math.max(maxStaleness, version - v);
        version++;
        a.trained(step.length);
      }
      expect(maxStaleness, `eta ${eta}`).toBeLessThanOrEqual(eta);
    }
  });

  it('with dynamic sampling dropping groups, generation rounds keep filling batches for every eta', () => {
    const G = 4;
    const P = 3;
    const B = G * P;
    for (const eta of [0, 1, 2]) {
      const a = new StalenessAdmission({ eta, samplesPerStep: B, maxConcurrent: B * (eta + 1) });
      let pending = 0; // kept samples waiting for a batch
      let steps = 0;
      let group = 0;
      let smallRounds = 0;
      for (let iteration = 0; iteration < 500 && steps < 20; iteration++) {
        const n = nextRoundPrompts(a.capacity, { eta, groupSize: G, promptsPerStep: P });
        if (n === 0) {
          // Waiting is only right while a full batch can be trained, which moves the version on.
          expect(pending, `eta ${eta}: waiting with a short batch would wait forever`).toBeGreaterThanOrEqual(
            B,
          );
        } else {
          if (n < P) smallRounds++;
          a.started(n * G);
          a.finished(n * G);
          for (let i = 0; i < n; i++) {
            if (group++ % 3 === 0)
              a.discarded(G); // every third group scores the same for all its samples
            else pending += G;
          }
        }
        while (pending >= B) {
          pending -= B;
          steps++;
          a.trained(B);
        }
      }
      expect(steps, `eta ${eta}`).toBe(20);
      if (eta > 0) expect(smallRounds, `eta ${eta}: rounds stay whole`).toBe(0);
      else expect(smallRounds).toBeGreaterThan(0);
    }
  });

  it('emits capacity changes', () => {
    const a = new StalenessAdmission({ eta: 0, samplesPerStep: 2, maxConcurrent: 2 });
    const seen: number[] = [];
    a.capacity$.subscribe((c) => seen.push(c));
    a.started(2);
    a.finished(2);
    a.trained(2);
    expect(seen).toEqual([2, 0, 2]);
  });
});

describe('DynamicSamplingBudget', () => {
  it('allows maxRounds batches of dropped samples between steps, then names the reasons and the settings to change', () => {
    const budget = new DynamicSamplingBudget(3, 8);
    for (let i = 0; i < 5; i++) budget.dropped(4, 'zero_variance');
    budget.dropped(4, 'incomplete_timeout'); // 24 = 3 batches' worth
    expect(() => budget.dropped(1, 'zero_variance')).toThrow(
      /25 samples were dropped since the last step \(zero_variance 21, incomplete_timeout 4\), more than 3 batches of 8.*grpo.dynamicSampling.*grpo.maxGenerationRounds.*grpo.groupTimeoutMs/,
    );
    const again = new DynamicSamplingBudget(3, 8);
    again.dropped(20, 'zero_variance');
    again.stepped();
    again.dropped(24, 'zero_variance');
    expect(() => again.dropped(1, 'zero_variance')).toThrow(
      /dropped since the last step \(zero_variance 25\)/,
    );
  });
});
