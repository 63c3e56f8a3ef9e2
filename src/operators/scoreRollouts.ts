import { mergeMap, Observable, type OperatorFunction } from 'rxjs';
import type { Rollout, ScoredRollout } from '../../schemas/index.ts';
import { weightedReward } from '../grpo/advantages.ts';
import { detachedMetrics, type Metrics } from '../metrics/metrics.ts';
import type { RewardFunction, RewardInput } from '../rewards/rewards.ts';
import { withRewards } from './records.ts';

export interface WeightedReward {
  fn: RewardFunction;
  weight?: number;
}

export interface ScoreRolloutsOptions {
  rewards: WeightedReward[];
  /** Most rollouts being scored at once when a reward is async (default SCORE_CONCURRENCY). */
  concurrency?: number;
  /** An async reward that has not answered after this many ms scores null (a recorded failure). */
  timeoutMs?: number;
  metrics?: Metrics;
}

class RewardTimeout extends Error {}
const TIMED_OUT = Symbol('timed out');

/** scoreRollouts' default bound on rollouts scored at once. */
export const SCORE_CONCURRENCY = 64;

/** Refuses rewards that share a name: their values, totals and metrics would mix. */
export function checkRewardNames(rewards: readonly WeightedReward[]): void {
  const names = rewards.map((r) => r.fn.name);
  const twice = [...new Set(names.filter((name, i) => names.indexOf(name) !== i))];
  if (twice.length > 0)
    throw new Error(
      `reward names must be unique. Two rewards are named ${twice.join(', ')}: give a module reward a name of its own ({ kind: 'module', path, name })`,
    );
}

/**
 * The reward stage: scores each rollout with every reward function, keeps each value by name and the
 * weighted total (TRL reward_weights; null rewards, the ones that do not apply, are left out of the sum).
 *
 * ```
 * source:  -a--b--c-|
 * output:  -A--B--C-|     (sync rewards: at once; async ones: when all of a rollout's have answered)
 * ```
 *
 * A reward function that throws, rejects, times out or returns a non-finite number gives null for that
 * rollout, counted as reward.failures{reward, kind=error|timeout}, and the rollout's total is null too:
 * a score that failed (a crashed sandbox, an unreachable scorer) is not a wrong answer, so the sample
 * gets advantage 0 instead of the other rewards' total. The run goes on. Async scoring may reorder
 * rollouts.
 */
export function scoreRollouts(options: ScoreRolloutsOptions): OperatorFunction<Rollout, ScoredRollout> {
  const metrics = options.metrics ?? detachedMetrics();
  const timeoutMs = options.timeoutMs ?? 30_000;
  checkRewardNames(options.rewards);
  const names = options.rewards.map((r) => r.fn.name);
  const weights = Object.fromEntries(options.rewards.map((r) => [r.fn.name, r.weight ?? 1]));
  const failures = Object.fromEntries(
    names.flatMap((name) =>
      (['error', 'timeout'] as const).map((kind) => [
        `${name}/${kind}`,
        metrics.counter('reward.failures', { reward: name, kind }),
      ]),
    ),
  );
  const scored = metrics.counter('reward.scored');

  /** What a failed reward gives: recorded as null, and it makes the rollout's total null. */
  const FAILED = Symbol('failed');
  const fail = (name: string, err: unknown): typeof FAILED => {
    failures[`${name}/${err instanceof RewardTimeout ? 'timeout' : 'error'}`]!.inc();
    return FAILED;
  };
  type Score = number | null | typeof FAILED;

  const finish = (rollout: Rollout, values: Score[]): ScoredRollout => {
    const rewards: Record<string, number | null> = {};
    let failed = false;
    names.forEach((name, i) => {
      const v = values[i]!;
      const value =
        v === null || v === FAILED || Number.isFinite(v) ? v : fail(name, new Error('non-finite'));
      failed ||= value === FAILED;
      rewards[name] = value === FAILED ? null : value;
    });
    scored.inc();
    return withRewards(rollout, rewards, failed ? null : weightedReward(rewards, weights));
  };

  // A rollout's scoring as an Observable: unsubscribing (a worker stopping) aborts its rewards' signal
  // and clears their timers, and nothing is counted for a rollout that was never emitted.
  const score = (rollout: Rollout): Observable<ScoredRollout> =>
    new Observable<ScoredRollout>((subscriber) => {
      const input: RewardInput = {
        prompt: rollout.prompt,
        completion: rollout.completion,
        completionTokens: rollout.completionTokenIds.length,
        finishReason: rollout.finishReason,
      };
      const controller = new AbortController();
      let cancelled = false;
      let finished = false;
      // One deadline for all of a rollout's rewards, which start together: when it passes, every reward
      // that has not answered is a timeout, whatever it does once the signal aborts it.
      let timer: NodeJS.Timeout | undefined;
      let deadline: Promise<typeof TIMED_OUT> | undefined;
      const withTimeout = (name: string, promise: Promise<number | null>): Promise<Score> => {
        deadline ??= new Promise((resolve) => {
          timer = setTimeout(() => {
            resolve(TIMED_OUT);
            controller.abort(new RewardTimeout(`the rewards timed out after ${timeoutMs} ms`));
          }, timeoutMs);
        });
        const answer = promise.then(
          (value) => ({ value }),
          (error: unknown) => ({ error }),
        );
        // Counted once the race is decided, and not at all for a rollout whose scoring was stopped.
        return Promise.race([answer, deadline]).then((r) =>
          cancelled
            ? FAILED
            : r === TIMED_OUT
              ? fail(name, new RewardTimeout())
              : 'error' in r
                ? fail(name, r.error)
                : r.value,
        );
      };
      const values = options.rewards.map(({ fn }) => {
        try {
          const v = fn.score(input, controller.signal);
          return v instanceof Promise ? withTimeout(fn.name, v) : v;
        } catch (err) {
          return fail(fn.name, err);
        }
      });
      const emit = (vs: Score[]) => {
        finished = true;
        clearTimeout(timer);
        try {
          subscriber.next(finish(rollout, vs));
          subscriber.complete();
        } catch (error) {
          subscriber.error(error);
        }
      };
      if (deadline === undefined) {
        emit(values as Score[]);
        return undefined;
      }
      void Promise.all(values).then((vs) => {
        if (!cancelled) emit(vs);
      });
      return () => {
        if (finished) return;
        cancelled = true;
        clearTimeout(timer);
        controller.abort(new Error('scoring stopped: unsubscribed'));
      };
    });

  return mergeMap(score, options.concurrency ?? SCORE_CONCURRENCY);
}
