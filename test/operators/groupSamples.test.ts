import { Subject } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics/metrics.ts';
import { groupSamples, type IncompleteGroup } from '../../src/operators/groupSamples.ts';
import { scored } from '../fixtures.ts';

const newScheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));

const values = {
  a: scored('A', 0, 1),
  b: scored('A', 1, 0),
  c: scored('B', 0, 1),
  d: scored('B', 1, 1),
  e: scored('C', 0, 1),
};
const groupA = { schemaVersion: 1, groupId: 'A', samples: [values.a, values.b] };
const groupB = { schemaVersion: 1, groupId: 'B', samples: [values.c, values.d] };

describe('groupSamples', () => {
  it('emits each group when its last sample arrives, in sample-index order', () => {
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const source = cold('-c-b-a-d-|', values);
      expectObservable(source.pipe(groupSamples({ maxWaitMs: 100 }))).toBe('-----A-B-|', {
        A: groupA,
        B: groupB,
      });
      expectSubscriptions(source.subscriptions).toBe('^--------!');
    });
  });

  it('reports a group that times out as incomplete, never emits it, and counts it', () => {
    const incomplete: IncompleteGroup[] = [];
    const scheduler = newScheduler();
    const metrics = new Metrics({ run: 't', scheduler });
    scheduler.run(({ cold, expectObservable, flush }) => {
      const source = cold('-e-a-b 20ms |', values);
      expectObservable(
        source.pipe(
          groupSamples({ maxWaitMs: 10, onIncomplete: (g) => incomplete.push(g), metrics, scheduler }),
        ),
      ).toBe('-----A 20ms |', { A: groupA });
      flush();
    });
    expect(incomplete).toEqual([{ groupId: 'C', reason: 'timeout', expected: 2, samples: [values.e] }]);
    const counts = metrics.snapshot();
    expect(counts['drops{reason=incomplete_timeout}']).toBe(1);
    expect(counts['drops.samples{reason=incomplete_timeout}']).toBe(1);
    expect(counts['groups.emitted']).toBe(1);
  });

  it('an onIncomplete that throws ends the stream with its error, on the timer path and on eviction', () => {
    const failure = new Error('onIncomplete failed');
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      // C times out at frame 11; its handler throws: the output errors there and the source is let go.
      const source = cold('-e-a-b 20ms |', values);
      const out = source.pipe(
        groupSamples({
          maxWaitMs: 10,
          onIncomplete: () => {
            throw failure;
          },
        }),
      );
      expectObservable(out).toBe('-----A-----#', { A: groupA }, failure);
      expectSubscriptions(source.subscriptions).toBe('^----------!');
    });
    newScheduler().run(({ cold, expectObservable }) => {
      // One open group at most: B's first sample evicts A, whose handler throws.
      const source = cold('-a-c-d-|', values);
      const out = source.pipe(
        groupSamples({
          maxWaitMs: 100,
          maxOpenGroups: 1,
          onIncomplete: () => {
            throw failure;
          },
        }),
      );
      expectObservable(out).toBe('---#', undefined, failure);
    });
  });

  it('reports groups still open at completion as incomplete (source_completed)', () => {
    const incomplete: IncompleteGroup[] = [];
    newScheduler().run(({ cold, expectObservable }) => {
      const source = cold('-a-e-|', values);
      expectObservable(
        source.pipe(groupSamples({ maxWaitMs: 100, onIncomplete: (g) => incomplete.push(g) })),
      ).toBe('-----|');
    });
    expect(incomplete.map((g) => [g.groupId, g.reason])).toEqual([
      ['A', 'source_completed'],
      ['C', 'source_completed'],
    ]);
  });

  it('passes errors through and drops its state', () => {
    newScheduler().run(({ cold, expectObservable }) => {
      const source = cold('-a-#', values, new Error('broker gone'));
      expectObservable(source.pipe(groupSamples({ maxWaitMs: 100 }))).toBe(
        '---#',
        {},
        new Error('broker gone'),
      );
    });
  });

  it('on unsubscription, unsubscribes from the source and cancels its timer', () => {
    const incomplete: IncompleteGroup[] = [];
    newScheduler().run(({ cold, expectObservable, expectSubscriptions, flush }) => {
      const source = cold('-a-c---', values);
      const out = source.pipe(groupSamples({ maxWaitMs: 10, onIncomplete: (g) => incomplete.push(g) }));
      expectObservable(out, '^--!').toBe('----');
      expectSubscriptions(source.subscriptions).toBe('^--!');
      flush();
    });
    expect(incomplete).toEqual([]);
  });

  it('ignores re-delivered samples and counts them; samples of an expired group are late drops', () => {
    const scheduler = newScheduler();
    const metrics = new Metrics({ run: 't', scheduler });
    const f = scored('C', 1, 0);
    scheduler.run(({ cold, expectObservable }) => {
      const source = cold('-a-a-b-b-e 20ms f-e-f-|', { ...values, f });
      expectObservable(source.pipe(groupSamples({ maxWaitMs: 5, metrics, scheduler }))).toBe(
        '-----A 30ms |',
        {
          A: groupA,
        },
      );
    });
    const counts = metrics.snapshot();
    // a again while open; b after A completed; e and f again after C timed out (each counted once)
    expect(counts['samples.duplicate']).toBe(4);
    expect(counts['drops.samples{reason=late}']).toBe(1); // f, which C had not received when it timed out
    expect(counts['drops.samples{reason=incomplete_timeout}']).toBe(1); // e
  });

  it('recognises re-deliveries for at least half of closedIdMemory groups back, and forgets older ones', () => {
    const metrics = new Metrics({ run: 't' });
    const emitted: string[] = [];
    const input = new Subject<ReturnType<typeof scored>>();
    input
      .pipe(groupSamples({ maxWaitMs: 60_000, closedIdMemory: 4, metrics }))
      .subscribe((g) => emitted.push(g.groupId));
    const complete = (id: string) => {
      input.next(scored(id, 0, 1));
      input.next(scored(id, 1, 0));
    };
    for (const id of ['g0', 'g1', 'g2', 'g3', 'g4', 'g5']) complete(id);
    input.next(scored('g4', 0, 1)); // within the last 2 closed groups: a re-delivery
    expect(metrics.snapshot()['samples.duplicate']).toBe(1);
    complete('g0'); // long forgotten: a new group with the same id
    expect(emitted).toEqual(['g0', 'g1', 'g2', 'g3', 'g4', 'g5', 'g0']);
    input.complete();
  });

  it('keeps memory bounded: beyond maxOpenGroups the oldest open group is evicted', () => {
    const metrics = new Metrics({ run: 't' });
    const input = new Subject<ReturnType<typeof scored>>();
    const incomplete: IncompleteGroup[] = [];
    let maxOpen = 0;
    const sub = input
      .pipe(
        groupSamples({
          maxWaitMs: 60_000,
          maxOpenGroups: 100,
          metrics,
          onIncomplete: (g) => incomplete.push(g),
        }),
      )
      .subscribe();
    for (let i = 0; i < 10_000; i++) {
      input.next(scored(`g${i}`, 0, 1, { groupSize: 4 }));
      maxOpen = Math.max(maxOpen, metrics.gauge('groups.open').value);
    }
    sub.unsubscribe();
    expect(maxOpen).toBe(100);
    expect(incomplete).toHaveLength(9_900);
    expect(incomplete[0]).toMatchObject({ groupId: 'g0', reason: 'evicted' });
    expect(metrics.snapshot()['drops{reason=incomplete_evicted}']).toBe(9_900);
  });
});
