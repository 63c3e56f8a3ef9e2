/**
 * A run over Kafka (`rxrl run <pipeline> --transport kafka --brokers host:port --role ...`): the stages of
 * the in-memory run as roles that talk only through the run's topics, each in as many processes as wanted.
 *
 * ```
 *  learner ──prompts──► rollout workers ──rollouts──► reward workers ──scored──► learner
 *     └──────────────versions (chunked weights)──────────► rollout workers
 *  every role ──metrics──►
 * ```
 *
 * Roles: `rollout` and `reward` are consumer groups (`<run>.rollout`, `<run>.reward`) that share their input
 * topic's partitions and ack a record only once what they made of it is durable; `learner` is the driver
 * and learner (src/run/kafka/learner.ts); `all` runs the three in this process. Workers stop once the
 * learner publishes the last version (or on `signal`).
 */
import { hostname } from 'node:os';
import { Metrics } from '../../metrics/metrics.ts';
import { KafkaPublisher } from '../../transport/kafka/sink.ts';
import { topicName } from '../../transport/kafka/topics.ts';
import { rewardsReady, topologyRewards } from '../taskRuntime.ts';
import { forwardMetrics, waitForRunTopics } from './common.ts';
import {
  KAFKA_ROLES,
  type KafkaRunOptions,
  type KafkaRunSummary,
  type LearnerSummary,
  type RewardSummary,
  type RoleContext,
  type RolloutSummary,
} from './types.ts';

export * from './types.ts';

/** Runs one role (or all) of a pipeline over Kafka; resolves when the role is done. Prints nothing. */
export async function runOverKafka(options: KafkaRunOptions): Promise<KafkaRunSummary> {
  const { topology, role } = options;
  if (!KAFKA_ROLES.includes(role)) {
    throw new Error(`Unknown role "${String(role)}": use one of ${KAFKA_ROLES.join(', ')}`);
  }
  const run = options.run ?? topology.name;
  topicName(run, 'prompts'); // a run name Kafka cannot use fails here, with the reason
  // A reward that cannot score (a module of one's own) fails here too, before a learner pretrains.
  if (role === 'reward' || role === 'all') await rewardsReady(topologyRewards(topology));
  const started = performance.now();
  const metrics = options.metrics ?? new Metrics({ run });
  const emit = options.onEvent ?? (() => undefined);
  // One controller for the roles of this process: a role that fails stops the others.
  const controller = new AbortController();
  const onAbort = () => controller.abort(options.signal?.reason);
  if (options.signal?.aborted) onAbort();
  options.signal?.addEventListener('abort', onAbort);
  const context = (suffix: string): RoleContext => ({
    options,
    run,
    totalSteps: options.steps ?? topology.run.steps,
    eta: options.eta ?? topology.grpo.eta,
    workerId: `${options.workerId ?? `${hostname()}-${process.pid}`}${suffix}`,
    metrics,
    emit,
    signal: controller.signal,
    sessionTimeoutMs: options.sessionTimeoutMs ?? 10_000,
  });

  const metricsPublisher = new KafkaPublisher({ connection: options.connection });
  let forwarding: ReturnType<typeof forwardMetrics> | undefined;
  let flushTimer: NodeJS.Timeout | undefined;
  const tasks: Promise<unknown>[] = [];
  const guard = <T>(work: Promise<T>): Promise<T> => {
    const guarded = work.catch((error: unknown) => {
      controller.abort(error);
      throw error;
    });
    guarded.catch(() => undefined); // awaited below; never an unhandled rejection meanwhile
    tasks.push(guarded);
    return guarded;
  };
  // Metrics go to <run>.metrics once the topics exist (the learner creates them).
  const topicsReady = () =>
    waitForRunTopics(options.connection, run, {
      timeoutMs: options.topicsTimeoutMs ?? 300_000,
      signal: controller.signal,
      onWait: (missing) =>
        emit({
          kind: 'waiting',
          role: role === 'reward' ? 'reward' : role === 'rollout' ? 'rollout' : 'learner',
          what: `the run's topics (${missing.length} missing)`,
        }),
    });
  try {
    let learner: Promise<LearnerSummary> | undefined;
    let rollout: Promise<RolloutSummary> | undefined;
    let reward: Promise<RewardSummary> | undefined;
    let learnerReady: Promise<unknown> = Promise.resolve();
    if (role === 'learner' || role === 'all') {
      const { runLearner } = await import('./learner.ts');
      const ctx = context('');
      learnerReady = new Promise<void>((resolve) => (ctx.ready = resolve));
      learner = guard(runLearner(ctx));
    }
    await topicsReady();
    // In one process the workers start once the learner is past pretraining, which holds the event loop:
    // consumers started before would miss their heartbeats meanwhile.
    if (role === 'all') await Promise.race([learnerReady, learner]);
    forwarding = forwardMetrics(metrics, metricsPublisher, run);
    flushTimer = setInterval(() => metrics.flush(), options.metricsIntervalMs ?? 5_000);
    if (role === 'rollout' || role === 'all') {
      const { runRollout } = await import('./rollout.ts');
      rollout = guard(runRollout(context(role === 'all' ? '-rollout' : '')));
    }
    if (role === 'reward' || role === 'all') {
      const { runReward } = await import('./reward.ts');
      reward = guard(runReward(context(role === 'all' ? '-reward' : '')));
    }
    const settled = await Promise.allSettled([learner, rollout, reward]);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    const [l, r, w] = settled.map((s) => (s.status === 'fulfilled' ? s.value : undefined)) as [
      LearnerSummary | undefined,
      RolloutSummary | undefined,
      RewardSummary | undefined,
    ];
    metrics.flush();
    await metricsPublisher.flush().catch(() => undefined);
    const failure = forwarding.failure();
    if (failure)
      throw new Error(`Publishing metrics to ${topicName(run, 'metrics')} failed: ${failure.message}`);
    return {
      run,
      role,
      seconds: (performance.now() - started) / 1000,
      ...(l ? { learner: l } : {}),
      ...(r ? { rollout: r } : {}),
      ...(w ? { reward: w } : {}),
    };
  } catch (error) {
    // Whatever failed, the roles already started stop before this returns.
    controller.abort(error);
    await Promise.allSettled(tasks);
    throw error;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    clearInterval(flushTimer);
    forwarding?.subscription.unsubscribe();
    await metricsPublisher.close().catch(() => {});
  }
}
