/**
 * The reward role: a consumer group on `<run>.rollouts` scoring each rollout and publishing it to
 * `<run>.scored`, acking the rollout only once the scored one is durable. Any number of reward workers share
 * the partitions; a re-delivered rollout is scored again and the learner skips the copy (same rollout id).
 */
import { randomUUID } from 'node:crypto';
import { filter, from, map, mergeMap, of, type Subscription } from 'rxjs';
import type { Rollout } from '../../../schemas/index.ts';
import { SCORE_CONCURRENCY, scoreRollouts } from '../../operators/scoreRollouts.ts';
import { KafkaPublisher } from '../../transport/kafka/sink.ts';
import { kafkaSource, type Delivery } from '../../transport/kafka/source.ts';
import { recordKey, topicName } from '../../transport/kafka/topics.ts';
import { rewardsReady, taskRuntime } from '../taskRuntime.ts';
import { deleteGroups, endOffsets } from './common.ts';
import type { RewardSummary, RoleContext } from './types.ts';

export async function runReward(ctx: RoleContext): Promise<RewardSummary> {
  const { options, run, metrics } = ctx;
  const { connection } = options;
  const runtime = taskRuntime(options.topology);
  // runOverKafka checked the rewards before any role started; this loads these instances (modules are
  // imported once per process), so that their first scores are not left waiting on it.
  await rewardsReady(runtime.rewards);
  const publisher = new KafkaPublisher({ connection, metrics });
  const scoredTopic = topicName(run, 'scored');
  const score = scoreRollouts({ rewards: runtime.rewards, metrics });
  let scored = 0;

  const rollouts = kafkaSource({
    connection,
    run,
    edge: 'rollouts',
    groupId: `${run}.reward`,
    maxInFlight: 512,
    sessionTimeoutMs: ctx.sessionTimeoutMs,
    metrics,
  });
  // The learner's versions tell a worker when the run is over. Read from the topic's last record: it is
  // the newest PolicyVersion, or a chunk of one the learner is publishing (its PolicyVersion comes next).
  const watchGroup = `${run}.reward-watch.${randomUUID()}`;
  const ends = await endOffsets(connection, topicName(run, 'versions'));
  const versions = kafkaSource({
    connection,
    run,
    edge: 'versions',
    groupId: watchGroup,
    startOffsets: new Map(Object.entries(ends).map(([p, high]) => [Number(p), Math.max(0, high - 1)])),
    sessionTimeoutMs: ctx.sessionTimeoutMs,
  });

  const subscriptions: Subscription[] = [];
  let stopped: 'finished' | 'signal';
  let closeFailure: unknown;
  try {
    stopped = await new Promise<'finished' | 'signal'>((resolve, reject) => {
      if (ctx.signal.aborted) return resolve('signal');
      ctx.signal.addEventListener('abort', () => resolve('signal'), { once: true });
      subscriptions.push(
        rollouts
          .pipe(
            // Each record is scored on its own (its delivery is acked once its score is durable), so the
            // bound on rollouts scored at once is this mergeMap's.
            mergeMap(
              (delivery: Delivery<Rollout>) =>
                of(delivery.value).pipe(
                  score,
                  mergeMap((sample) =>
                    from(
                      publisher.publish(
                        scoredTopic,
                        'ScoredRollout',
                        sample,
                        recordKey('ScoredRollout', sample, run),
                      ),
                    ),
                  ),
                  map(() => delivery),
                ),
              SCORE_CONCURRENCY,
            ),
          )
          .subscribe({
            next: (delivery) => {
              delivery.ack();
              scored++;
            },
            error: reject,
          }),
        versions
          .pipe(
            map((delivery) => {
              delivery.ack();
              return delivery.value.version;
            }),
            filter((version) => version >= ctx.totalSteps),
          )
          .subscribe({ next: () => resolve('finished'), error: reject }),
      );
    });
  } finally {
    // Also when scoring or publishing failed: the consumers leave their groups, the producer
    // disconnects and the watch group goes, so that a failed worker neither lingers nor leaves litter.
    for (const subscription of subscriptions) subscription.unsubscribe();
    const closing = await Promise.allSettled([rollouts.closed(), versions.closed(), publisher.close()]);
    await deleteGroups(connection, [watchGroup]);
    closeFailure = closing.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason;
  }
  // A worker that stopped cleanly reports what went wrong on the way out (a last offset commit that
  // failed: its last rollouts will be scored again); one that failed has reported why it failed.
  if (closeFailure) throw closeFailure;
  ctx.emit({ kind: 'stopped', role: 'reward', reason: stopped });
  return { worker: ctx.workerId, scored };
}
