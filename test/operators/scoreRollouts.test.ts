import { firstValueFrom, from, toArray } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { Rollout } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { scoreRollouts } from '../../src/operators/scoreRollouts.ts';
import { accuracyReward, formatReward, type RewardFunction } from '../../src/rewards/rewards.ts';
import { parseMessage } from '../../src/validation.ts';
import { scored } from '../fixtures.ts';

const rollout = (id: string, completion: string): Rollout => {
  const { rewards: _r, reward: _t, ...r } = scored(id, 0, null);
  return { ...r, completion };
};
const good = rollout('a', '<think>2+2</think><answer>4</answer>');
const wrong = rollout('b', '<think>2+2</think><answer>5</answer>');

describe('scoreRollouts', () => {
  it('keeps every reward by name and the weighted total; sync rewards emit at once', () => {
    new TestScheduler((a, e) => expect(a).toEqual(e)).run(
      ({ cold, expectObservable, expectSubscriptions }) => {
        const source = cold('-a-b-|', { a: good, b: wrong });
        const out = source.pipe(
          scoreRollouts({ rewards: [{ fn: accuracyReward() }, { fn: formatReward(), weight: 0.5 }] }),
        );
        expectObservable(out).toBe('-A-B-|', {
          A: { ...good, rewards: { accuracy: 1, format: 1 }, reward: 1.5 },
          B: { ...wrong, rewards: { accuracy: 0, format: 1 }, reward: 0.5 },
        });
        expectSubscriptions(source.subscriptions).toBe('^----!');
      },
    );
  });

  it('scored rollouts are valid ScoredRollout messages', async () => {
    const [s] = await firstValueFrom(
      from([good]).pipe(scoreRollouts({ rewards: [{ fn: accuracyReward() }] }), toArray()),
    );
    expect(parseMessage('ScoredRollout', s).reward).toBe(1);
  });

  it('a reward that does not apply (null) is left out of the total', async () => {
    const notApplicable: RewardFunction = { name: 'language', score: () => null };
    const out = await firstValueFrom(
      from([good, wrong]).pipe(
        scoreRollouts({ rewards: [{ fn: accuracyReward() }, { fn: notApplicable }, { fn: formatReward() }] }),
        toArray(),
      ),
    );
    expect(out.map((s) => s.reward)).toEqual([2, 1]);
  });

  it('a reward that throws, rejects or times out scores null, is counted, makes the total null (not a wrong answer), and the run goes on', async () => {
    const metrics = new Metrics({ run: 't' });
    const throws: RewardFunction = {
      name: 'throws',
      score: () => {
        throw new Error('bug in reward');
      },
    };
    const rejects: RewardFunction = { name: 'rejects', score: async () => Promise.reject(new Error('503')) };
    let aborted = 0;
    const hangs: RewardFunction = {
      name: 'hangs',
      score: (_input, signal) =>
        new Promise(() => {
          signal.addEventListener('abort', () => aborted++);
        }),
    };
    const remote: RewardFunction = { name: 'remote', score: async () => 0.25 };
    const out = await firstValueFrom(
      from([good, wrong]).pipe(
        scoreRollouts({
          rewards: [{ fn: accuracyReward() }, { fn: throws }, { fn: rejects }, { fn: hangs }, { fn: remote }],
          timeoutMs: 50,
          metrics,
        }),
        toArray(),
      ),
    );
    expect(out.map((s) => s.rewards)).toEqual([
      { accuracy: 1, throws: null, rejects: null, hangs: null, remote: 0.25 },
      { accuracy: 0, throws: null, rejects: null, hangs: null, remote: 0.25 },
    ]);
    expect(out.map((s) => s.reward)).toEqual([null, null]);
    expect(aborted).toBe(2);
    expect(metrics.snapshot()).toMatchObject({
      'reward.failures{reward=throws,kind=error}': 2,
      'reward.failures{reward=rejects,kind=error}': 2,
      'reward.failures{reward=hangs,kind=timeout}': 2,
      'reward.scored': 2,
    });
  });

  it('rewards still unanswered at the deadline are all timeouts, whatever their order and however they take the abort', async () => {
    // "polite" rejects as soon as the signal aborts; "hangs" never answers. Both time out together.
    const polite: RewardFunction = {
      name: 'polite',
      score: (_input, signal) =>
        new Promise((_resolve, reject) =>
          signal.addEventListener('abort', () => reject(new Error('aborted'))),
        ),
    };
    const hangs: RewardFunction = { name: 'hangs', score: () => new Promise(() => {}) };
    // "quits" answers null as soon as the signal aborts.
    const quits: RewardFunction = {
      name: 'quits',
      score: (_input, signal) =>
        new Promise((resolve) => signal.addEventListener('abort', () => resolve(null))),
    };
    for (const rewards of [
      [hangs, polite, quits],
      [polite, quits, hangs],
      [quits, hangs, polite],
    ]) {
      const metrics = new Metrics({ run: 't' });
      const [out] = await firstValueFrom(
        from([good]).pipe(
          scoreRollouts({ rewards: rewards.map((fn) => ({ fn })), timeoutMs: 20, metrics }),
          toArray(),
        ),
      );
      expect(out!.rewards).toEqual({ polite: null, hangs: null, quits: null });
      expect(out!.reward).toBeNull();
      expect(metrics.snapshot()).toMatchObject({
        'reward.failures{reward=polite,kind=timeout}': 1,
        'reward.failures{reward=hangs,kind=timeout}': 1,
        'reward.failures{reward=quits,kind=timeout}': 1,
        'reward.failures{reward=polite,kind=error}': 0,
      });
    }
  });

  it('unsubscribing aborts the rewards in flight and counts nothing for rollouts never emitted', async () => {
    const metrics = new Metrics({ run: 't' });
    const reasons: unknown[] = [];
    const slow: RewardFunction = {
      name: 'slow',
      score: (_input, signal) =>
        new Promise((resolve) => {
          const timer = setTimeout(() => resolve(1), 10_000);
          signal.addEventListener('abort', () => {
            clearTimeout(timer);
            reasons.push(signal.reason);
          });
        }),
    };
    const subscription = from([good, wrong])
      .pipe(scoreRollouts({ rewards: [{ fn: slow }], timeoutMs: 60_000, metrics }))
      .subscribe();
    await new Promise((r) => setTimeout(r, 20));
    subscription.unsubscribe();
    expect(reasons.map((r) => (r as Error).message)).toEqual([
      'scoring stopped: unsubscribed',
      'scoring stopped: unsubscribed',
    ]);
    await new Promise((r) => setTimeout(r, 20));
    expect(metrics.snapshot()).toMatchObject({
      'reward.scored': 0,
      'reward.failures{reward=slow,kind=timeout}': 0,
      'reward.failures{reward=slow,kind=error}': 0,
    });
  });

  it('limits how many rollouts are scored at once', async () => {
    let inFlight = 0;
    let peak = 0;
    const slow: RewardFunction = {
      name: 'slow',
      score: async () => {
        peak = Math.max(peak, ++inFlight);
        await new Promise((r) => setTimeout(r, 5));
        inFlight--;
        return 1;
      },
    };
    const many = Array.from({ length: 20 }, (_, i) => rollout(`g${i}`, ''));
    const out = await firstValueFrom(
      from(many).pipe(scoreRollouts({ rewards: [{ fn: slow }], concurrency: 3 }), toArray()),
    );
    expect(out).toHaveLength(20);
    expect(peak).toBe(3);
  });

  it('rejects duplicate reward names', () => {
    expect(() => scoreRollouts({ rewards: [{ fn: accuracyReward() }, { fn: accuracyReward() }] })).toThrow(
      /reward names must be unique/,
    );
  });
});
