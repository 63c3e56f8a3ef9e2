/**
 * The learner role: the driver and the learner of a run over Kafka.
 *
 * - Publishes prompts to `<run>.prompts` in the deterministic data order, as far ahead as the staleness
 *   admission allows, each naming its data-order cursor and the oldest policy version it may be sampled with.
 * - Reads `<run>.scored` (group `<run>.learner`) and assembles groups exactly as the in-memory run does:
 *   groupSamples -> dropZeroVariance -> groupRelativeAdvantages -> toGradientBatches -> staleness gate -> train.
 * - After each step: checkpoint (model, optimizer and the learner state below, in one atomic directory),
 *   then the acks that let offsets commit (a restart reads from the checkpoint's positions, not the
 *   commits), then the new version with its weights on `<run>.versions`.
 *
 * The learner state says what has been consumed: the prompt cursor, the prompts published and not yet
 * decided, per partition of `<run>.scored` the offset to read again from (the lowest offset of a sample whose
 * group is not trained or dropped yet) and the groups decided past it. A learner started on a directory with
 * a checkpoint resumes from it: it reads `<run>.scored` from those offsets, skips the samples of groups
 * decided already (by group id), adopts the prompts a previous incarnation published after its checkpoint,
 * and publishes the checkpoint's version if the versions topic does not have it yet. A version is published
 * only once its checkpoint is durable, so a restart never publishes two different policies as one version.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Admin } from 'kafkajs';
import { EMPTY, Subject, concatMap, from, identity, tap, type Observable } from 'rxjs';
import { z } from 'zod';
import {
  SCHEMA_VERSION,
  type GradientBatch,
  type Prompt,
  type ScoredRollout,
} from '../../../schemas/index.ts';
import { versionReport } from '../../learner/learner.ts';
import { StalenessGate } from '../../operators/boundedStaleness.ts';
import { dropZeroVariance } from '../../operators/dropZeroVariance.ts';
import { groupRelativeAdvantages } from '../../operators/groupRelativeAdvantages.ts';
import { groupSamples } from '../../operators/groupSamples.ts';
import { toGradientBatches } from '../../operators/toGradientBatches.ts';
import { selectBackend } from '../../policy/backend.ts';
import { isCheckpoint, loadCheckpoint } from '../../policy/checkpoint.ts';
import { CharTokenizer } from '../../policy/tokenizer.ts';
import { DynamicSamplingBudget, nextRoundPrompts, StalenessAdmission } from '../../scheduling/admission.ts';
import { createKafka } from '../../transport/kafka/client.ts';
import { KafkaPublisher } from '../../transport/kafka/sink.ts';
import { decodeMessage, kafkaSource, type Delivery } from '../../transport/kafka/source.ts';
import { createRunTopics, limitVersionsTopic, recordKey, topicName } from '../../transport/kafka/topics.ts';
import {
  decodeVersionsRecord,
  publishPolicyVersion,
  WEIGHTS_CHUNK_BYTES,
} from '../../transport/kafka/weights.ts';
import { ensureBaseModel, modelConfig } from '../pretrain.ts';
import {
  DataOrder,
  advantageOptions,
  learnerConfig,
  meanStaleness,
  recordStep,
  RolloutWindow,
  withThreads,
} from '../stepStats.ts';
import { taskRuntime } from '../taskRuntime.ts';
import type { LearnerReply, LearnerRequest } from '../workers/protocol.ts';
import { WorkerClient } from '../workers/rpc.ts';
import { exportWeights, type WeightArrays } from '../workers/weights.ts';
import { Changes, pollUntil, readTopicSince, retrying } from './common.ts';
import { ConsumedPositions } from './positions.ts';
import type { LearnerSummary, RoleContext } from './types.ts';
import { encodeWeights } from './weights.ts';

const Counts = z.record(z.string(), z.int().nonnegative());

/** The learner state a checkpoint carries (in its metadata, under `kafka`) and state.json shows. */
export const LearnerState = z
  .object({
    format: z.literal('rxrl-kafka-learner'),
    formatVersion: z.literal(1),
    run: z.string().min(1),
    /** 1 for the first process of the run, one more for each restart. */
    incarnation: z.int().positive(),
    version: z.int().nonnegative(),
    /** Prompts below this data-order position are published (durably). */
    promptCursor: z.int().nonnegative(),
    /** End offsets of `<run>.prompts` when the state was taken: what was published after is read at restart. */
    promptsEnd: Counts,
    /** Per partition of `<run>.scored`: where a restart reads from. */
    positions: Counts,
    /** Prompts published and neither trained nor dropped yet. */
    pending: z.array(z.object({ id: z.string(), cursor: z.int().nonnegative() }).strict()),
    /** Recently decided groups and how ("trained" or the drop reason), every one decided past `positions` included. */
    resolved: z.array(z.tuple([z.string(), z.string()])),
    prompts: z
      .object({ published: z.int().nonnegative(), trained: z.int().nonnegative(), dropped: Counts })
      .strict(),
    samples: z
      .object({ trained: z.int().nonnegative(), dropped: Counts, duplicates: z.int().nonnegative() })
      .strict(),
  })
  .strict();
export type LearnerState = z.infer<typeof LearnerState>;

/** Decided group ids a checkpoint remembers beyond those it must (late duplicates of older ones are skipped too). */
const RESOLVED_IN_CHECKPOINT = 10_000;

/** The data-order position a prompt of this run was published at, if it says. */
export function promptCursorOf(prompt: Prompt): number | undefined {
  const c = prompt.meta?.['cursor'];
  return typeof c === 'number' && Number.isInteger(c) && c >= 0 ? c : undefined;
}

interface PendingPrompt {
  cursor: number;
  publishedAt: number;
  /** Sample indices received. */
  indices: Set<number>;
  /** Deliveries of its samples, settled when the group is decided. */
  deliveries: Delivery<ScoredRollout>[];
}

/** One async section at a time (prompt publishing and the checkpoint's snapshot). */
class Lock {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(section: () => Promise<T>): Promise<T> {
    const result = this.tail.then(section);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

const bump = (counts: Record<string, number>, key: string, by = 1) => {
  if (by > 0) counts[key] = (counts[key] ?? 0) + by;
};

export async function runLearner(ctx: RoleContext): Promise<LearnerSummary> {
  const { options, run, metrics, emit, totalSteps, eta } = ctx;
  const { topology, connection } = options;
  const g = topology.grpo;
  const { groupSize: G, promptsPerStep: P } = g;
  const B = G * P;
  mkdirSync(options.runDir, { recursive: true });
  const paths = {
    checkpoint: join(options.runDir, 'checkpoint'),
    state: join(options.runDir, 'state.json'),
    log: join(options.runDir, 'learner.jsonl'),
    metrics: join(options.runDir, 'metrics.jsonl'),
  };
  const topics = {
    prompts: topicName(run, 'prompts'),
    scored: topicName(run, 'scored'),
    versions: topicName(run, 'versions'),
  };

  const created = await createRunTopics(connection, run, {
    ...(options.partitions !== undefined ? { partitions: options.partitions } : {}),
    ...(options.replicationFactor !== undefined ? { replicationFactor: options.replicationFactor } : {}),
  });
  emit({ kind: 'topics', run, created });
  const admin = createKafka(connection).admin();
  await admin.connect();
  const endOffsets = async (topic: string) =>
    Object.fromEntries(
      (await retrying(() => admin.fetchTopicOffsets(topic))).map((o) => [
        String(o.partition),
        Number(o.high),
      ]),
    ) as Record<string, number>;

  const metricsLog = metrics.stream.subscribe((m) => appendFileSync(paths.metrics, `${JSON.stringify(m)}\n`));
  const publisher = new KafkaPublisher({ connection, metrics });
  let learner: WorkerClient<LearnerRequest, LearnerReply> | undefined;
  try {
    await noOtherLearner(admin, run, ctx.sessionTimeoutMs + 5_000, ctx.signal, () =>
      emit({ kind: 'waiting', role: 'learner', what: `the learner before this one to leave ${run}.learner` }),
    );
    await selectBackend(options.backend);
    const runtime = taskRuntime(topology);
    const dataOrder = new DataOrder(runtime.train, topology.seed);
    const tokenizer = new CharTokenizer(runtime.alphabet);

    // --- where to start: the checkpoint in runDir, or the base model ------------------------------------
    const resuming = isCheckpoint(paths.checkpoint);
    let state: LearnerState;
    let weights: WeightArrays;
    if (resuming) {
      const ckpt = await loadCheckpoint(paths.checkpoint);
      weights = exportWeights(ckpt.model);
      ckpt.model.dispose();
      for (const tensor of ckpt.optimizer.values()) tensor.dispose();
      const parsed = LearnerState.safeParse(ckpt.metadata?.['kafka']);
      if (!parsed.success) {
        throw new Error(
          `${paths.checkpoint} is not the checkpoint of a learner over Kafka (its metadata has no valid learner ` +
            `state: ${z.prettifyError(parsed.error)}); give the learner a run directory of its own`,
        );
      }
      state = parsed.data;
      if (state.run !== run) {
        throw new Error(
          `${options.runDir} holds the checkpoint of run "${state.run}", not of "${run}": ` +
            'use another run directory, or the run name of that checkpoint',
        );
      }
      if (ckpt.policyVersion !== state.version) {
        throw new Error(
          `${paths.checkpoint} is at policy version ${ckpt.policyVersion} but its learner state at ${state.version}`,
        );
      }
      state.incarnation++;
    } else {
      const base = await ensureBaseModel({
        topology,
        runtime,
        tokenizer,
        cacheDir: options.cacheDir,
        metrics,
        onStep: (step, total, loss) => emit({ kind: 'pretrain', step, total, loss }),
      });
      emit({ kind: 'base-model', dir: base.dir, cached: base.cached });
      weights = exportWeights(base.model);
      base.model.dispose();
      state = {
        format: 'rxrl-kafka-learner',
        formatVersion: 1,
        run,
        incarnation: 1,
        version: 0,
        promptCursor: 0,
        // Records already on the topics (an earlier run of the same name) are not this run's.
        promptsEnd: await endOffsets(topics.prompts),
        positions: await endOffsets(topics.scored),
        pending: [],
        resolved: [],
        prompts: { published: 0, trained: 0, dropped: {} },
        samples: { trained: 0, dropped: {}, duplicates: 0 },
      };
    }
    const resumedFrom = resuming ? state.version : undefined;
    // A versions topic keeps the last few versions, not every one for a week: set while it holds no version
    // yet (made now, or by a first start that stopped before publishing one), unless it has a
    // retention.bytes of its own. A cluster that refuses it (no ACL to alter configs, a floor on
    // segment.bytes) runs on without it.
    if (Object.values(await endOffsets(topics.versions)).every((offset) => offset === 0)) {
      const bytes = Object.values(weights).reduce((n, values) => n + values.byteLength, 0);
      await retrying(() => limitVersionsTopic(admin, run, bytes)).catch((error: Error) =>
        emit({
          kind: 'warning',
          message: `could not limit ${topics.versions}'s retention to a few versions (${error.message}); it keeps every version for the broker's retention.ms`,
        }),
      );
    }

    learner = new WorkerClient<LearnerRequest, LearnerReply>(
      'learner',
      new URL('../workers/learner.worker.ts', import.meta.url),
    );
    const ready = await learner.request<Extract<LearnerReply, { type: 'ready' }>>({
      type: 'init',
      backend: options.backend,
      model: modelConfig(topology, tokenizer),
      tokenizer: tokenizer.spec(),
      version: state.version,
      weights,
      ...(resuming ? { checkpoint: paths.checkpoint } : {}),
      config: learnerConfig(topology),
      threads: options.learnerThreads ?? 1,
    });
    emit({ kind: 'backend', role: 'learner', backend: withThreads(ready) });
    if (ready.version !== state.version) {
      throw new Error(
        `resume: the checkpoint loaded at version ${ready.version}, its state says ${state.version}`,
      );
    }

    // --- the bookkeeping ------------------------------------------------------------------------------
    const pending = new Map<string, PendingPrompt>();
    const resolved = new Map<string, string>(state.resolved);
    const positions = new ConsumedPositions(state.positions);
    /** Deliveries whose group is decided, acked once a checkpoint records that. */
    let toAck: Delivery<ScoredRollout>[] = [];
    const now = Date.now();
    for (const p of state.pending) {
      pending.set(p.id, { cursor: p.cursor, publishedAt: now, indices: new Set(), deliveries: [] });
    }
    let cursor = state.promptCursor;
    /** Cursors at or past `cursor` published already (by an earlier incarnation): not published again. */
    const published = new Set<number>();
    for (const p of pending.values()) if (p.cursor >= cursor) published.add(p.cursor);

    let adopted = 0;
    if (resuming) {
      // Prompts an earlier incarnation published after its checkpoint: pending too, not published again.
      for (const message of await readTopicSince(connection, topics.prompts, state.promptsEnd)) {
        const decoded = decodeMessage('Prompt', message.value);
        if (decoded.kind !== 'message') continue;
        const prompt = decoded.value;
        const c = promptCursorOf(prompt);
        if (c === undefined || c < state.promptCursor) continue;
        if (pending.has(prompt.id) || resolved.has(prompt.id)) continue;
        pending.set(prompt.id, { cursor: c, publishedAt: now, indices: new Set(), deliveries: [] });
        published.add(c);
        state.prompts.published++;
        adopted++;
      }
      emit({ kind: 'resume', version: state.version, promptCursor: cursor, pending: pending.size, adopted });
    }
    appendFileSync(
      paths.log,
      `${JSON.stringify({
        event: resuming ? 'resume' : 'start',
        incarnation: state.incarnation,
        version: state.version,
        promptCursor: cursor,
        positions: state.positions,
        pending: pending.size,
        adopted,
        time: Date.now(),
      })}\n`,
    );

    const admission = new StalenessAdmission({ eta, samplesPerStep: B, maxConcurrent: B * (eta + 1) });
    /** Dynamic sampling's budget: the samples of the prompts dropped since the last step. */
    const budget = new DynamicSamplingBudget(g.maxGenerationRounds, B);
    if (pending.size > 0) {
      // Already generating: they count against the staleness bound like any other. Over capacity only when
      // a previous incarnation ran with a larger eta; nothing more is published until they are decided.
      const n = Math.min(pending.size * G, admission.capacity);
      admission.started(n);
      admission.finished(n);
    }

    const lock = new Lock();
    const rememberResolved = (id: string, outcome: string) => {
      resolved.set(id, outcome);
      if (resolved.size > 4 * RESOLVED_IN_CHECKPOINT) {
        const keep = new Set(positions.settledPast());
        for (const key of resolved.keys()) {
          if (resolved.size <= 2 * RESOLVED_IN_CHECKPOINT) break;
          if (!keep.has(key)) resolved.delete(key);
        }
      }
    };
    /**
     * A sample decided (trained, dropped, a duplicate, of an unknown prompt): its place in the source's
     * in-flight bound is free now, and it is acked at the next checkpoint, which makes the decision durable.
     */
    const settle = (delivery: Delivery<ScoredRollout>, groupId: string) => {
      positions.settled(delivery.partition, Number(delivery.offset), groupId);
      delivery.release();
      toAck.push(delivery);
    };
    const droppedSamples = (reason: string) => metrics.counter('drops.samples', { reason });
    const droppedPrompts = (reason: string) => metrics.counter('prompts.dropped', { reason });
    const trainedPrompts = metrics.counter('prompts.trained');
    const publishedPrompts = metrics.counter('prompts.published');
    const duplicates = metrics.counter('learner.duplicates');
    const admission$ = new Changes();
    admission.capacity$.subscribe(() => admission$.notify());

    /**
     * The sample indices each group dropped incomplete (or with no rollouts in time) had received, the
     * latest few thousand, in memory: a sample of another index that comes after is late, a dropped
     * sample, not a duplicate.
     */
    const receivedWhenDropped = new Map<string, Set<number>>();
    /** Decides a prompt's group: trained, or dropped for `outcome`, with its samples by outcome. */
    const resolve = (id: string, outcome: string, trained: number, dropped: Record<string, number> = {}) => {
      const p = pending.get(id);
      if (!p) return;
      pending.delete(id);
      rememberResolved(id, outcome);
      if (outcome.startsWith('incomplete_') || outcome === 'no_rollouts') {
        receivedWhenDropped.set(id, p.indices);
        if (receivedWhenDropped.size > 4 * RESOLVED_IN_CHECKPOINT)
          receivedWhenDropped.delete(receivedWhenDropped.keys().next().value!);
      }
      for (const delivery of p.deliveries) settle(delivery, id);
      p.deliveries = [];
      if (outcome === 'trained') {
        state.prompts.trained++;
        trainedPrompts.inc();
      } else {
        bump(state.prompts.dropped, outcome);
        droppedPrompts(outcome).inc();
      }
      state.samples.trained += trained;
      for (const [reason, n] of Object.entries(dropped)) bump(state.samples.dropped, reason, n);
      admission.discarded(G - trained);
      if (outcome === 'zero_variance' || outcome === 'no_rollouts' || outcome.startsWith('incomplete_'))
        budget.dropped(G, outcome);
    };

    // --- stopping ---------------------------------------------------------------------------------------
    let done = state.version >= totalSteps;
    let stopReason: 'finished' | 'signal' = 'finished';
    let failure: Error | undefined;
    const stopChanges = new Changes();
    const stop = (reason: 'finished' | 'signal') => {
      if (done && reason === 'signal') return;
      if (!done) stopReason = reason;
      done = true;
      stopChanges.notify();
      admission$.notify();
    };
    const fail = (error: unknown) => {
      failure ??= error instanceof Error ? error : new Error(String(error));
      stop('signal');
    };
    const onAbort = () => stop('signal');
    ctx.signal.addEventListener('abort', onAbort);
    if (ctx.signal.aborted) onAbort();

    // --- checkpoint, then version, then commits ---------------------------------------------------------
    const snapshot = (): LearnerState => {
      const past = positions.settledPast();
      const recent = [...resolved].slice(-RESOLVED_IN_CHECKPOINT);
      const kept = new Set(recent.map(([id]) => id));
      const older = [...resolved].filter(([id]) => !kept.has(id) && past.has(id));
      return {
        ...state,
        promptCursor: cursor,
        positions: positions.positions(),
        pending: [...pending].map(([id, p]) => ({ id, cursor: p.cursor })),
        resolved: [...older, ...recent],
        prompts: { ...state.prompts, dropped: { ...state.prompts.dropped } },
        samples: { ...state.samples, dropped: { ...state.samples.dropped } },
      };
    };
    /** `reason`: the initial checkpoint, one after a step, or the last one when the learner stops. */
    const checkpoint = async (reason: 'start' | 'step' | 'stop') => {
      const { taken, acks } = await lock.run(async () => {
        // No prompt is being published now: the end offsets cover exactly the prompts below the cursor.
        state.promptsEnd = await endOffsets(topics.prompts);
        const acks = toAck;
        toAck = [];
        return { taken: snapshot(), acks };
      });
      await learner!.request({ type: 'save', dir: paths.checkpoint, metadata: { kafka: taken } });
      writeFileSync(paths.state, `${JSON.stringify(taken, null, 2)}\n`);
      appendFileSync(
        paths.log,
        `${JSON.stringify({
          event: 'checkpoint',
          reason,
          incarnation: taken.incarnation,
          version: taken.version,
          promptCursor: taken.promptCursor,
          positions: taken.positions,
          pending: taken.pending.length,
          prompts: taken.prompts,
          time: Date.now(),
        })}\n`,
      );
      for (const delivery of acks) delivery.ack();
      emit({ kind: 'checkpoint', step: taken.version, dir: paths.checkpoint });
    };
    /** The newest version on the versions topic: the oldest a new prompt may ask rollout workers for. */
    let lastPublished = 0;
    const publishVersion = async (version: number, arrays: WeightArrays, batches: string[] = []) => {
      const bytes = encodeWeights(arrays);
      await publishPolicyVersion(
        publisher,
        run,
        {
          schemaVersion: SCHEMA_VERSION,
          version,
          step: version,
          time: Date.now(),
          ...(batches.length > 0 ? { consumedBatches: batches } : {}),
        },
        bytes,
      );
      lastPublished = version;
      emit({ kind: 'version-published', version, bytes: bytes.byteLength });
    };

    // Checked before the first checkpoint: a learner in the wrong directory writes nothing there.
    const latest = await latestPublishedVersion(
      connection,
      run,
      Math.ceil(encodeWeights(weights).byteLength / WEIGHTS_CHUNK_BYTES),
    );
    if (latest > state.version) {
      throw new Error(
        `${topics.versions} already has policy version ${latest}, but the checkpoint in ${options.runDir} is at ` +
          `${state.version}: this is not the directory of the learner that published it`,
      );
    }
    if (!resuming) await checkpoint('start');
    if (latest < state.version || latest < 0) await publishVersion(state.version, weights);
    else lastPublished = latest;

    // --- the stream topology -----------------------------------------------------------------------------
    const scored = new Subject<ScoredRollout>();
    const trainedSamples = metrics.counter('samples.trained');
    const runEnded = droppedSamples('run_ended');
    const window = new RolloutWindow();
    const staleByGroup = new Map<string, number>();
    const groupIdsOf = (batch: GradientBatch) => new Set(batch.samples.map((s) => s.groupId));
    /** Groups in batches not yet decided, by how many such batches hold samples of them. */
    const claimed = new Map<string, number>();
    const claim = (id: string) => claimed.set(id, (claimed.get(id) ?? 0) + 1);
    const unclaim = (id: string) => {
      const n = (claimed.get(id) ?? 0) - 1;
      if (n > 0) claimed.set(id, n);
      else claimed.delete(id);
    };
    const stalenessGate = new StalenessGate({
      eta,
      metrics,
      onStale: (stale) => {
        for (const s of stale) staleByGroup.set(s.groupId, (staleByGroup.get(s.groupId) ?? 0) + 1);
        // Swept once this batch has let go of the groups it no longer carries.
        queueMicrotask(sweepStale);
      },
    });
    stalenessGate.setVersion(state.version);

    const onDelivery = (delivery: Delivery<ScoredRollout>) => {
      positions.delivered(delivery.partition, Number(delivery.offset));
      const s = delivery.value;
      const p = pending.get(s.groupId);
      if (!p) {
        const received = receivedWhenDropped.get(s.groupId);
        if (received && !received.has(s.index)) {
          // Its group was dropped incomplete before it came: late, counted with the drops.
          received.add(s.index);
          droppedSamples('late').inc();
          bump(state.samples.dropped, 'late');
        } else if (resolved.has(s.groupId)) {
          state.samples.duplicates++;
          duplicates.inc();
        } else {
          // Not a prompt of this learner's (another run of the same name, or decided too long ago to remember).
          droppedSamples('unknown_prompt').inc();
          bump(state.samples.dropped, 'unknown_prompt');
        }
        settle(delivery, s.groupId);
        return;
      }
      p.deliveries.push(delivery);
      if (p.indices.has(s.index)) {
        // A re-delivery of a sample its open group already holds (a rollout worker's prompts regenerated
        // after a rebalance): counted here, as it never reaches groupSamples.
        state.samples.duplicates++;
        duplicates.inc();
        return;
      }
      p.indices.add(s.index);
      window.add(s);
      options.onCompletion?.(s);
      scored.next(s);
    };

    const sweepStale = () => {
      for (const [id, n] of staleByGroup) {
        if (claimed.has(id)) continue;
        staleByGroup.delete(id);
        resolve(id, 'stale', 0, { stale: n });
      }
    };

    let training: Promise<void> = Promise.resolve();
    const train = (batch: GradientBatch): Observable<void> =>
      from(
        (training = (async () => {
          const groups = new Map<string, number>();
          for (const s of batch.samples) groups.set(s.groupId, (groups.get(s.groupId) ?? 0) + 1);
          const decide = (outcome: string) => {
            for (const [id, n] of groups) {
              const stale = staleByGroup.get(id) ?? 0;
              staleByGroup.delete(id);
              unclaim(id);
              if (outcome === 'trained') resolve(id, 'trained', n, { stale });
              else resolve(id, outcome, 0, { [outcome]: n, stale });
            }
          };
          if (done) {
            // Stopped by a signal: left pending, so that a restart trains them.
            if (stopReason !== 'finished') return;
            runEnded.inc(batch.samples.length);
            decide('run_ended');
            return;
          }
          const staleness = meanStaleness(batch, state.version);
          const reply = await learner!.request<Extract<LearnerReply, { type: 'trained' }>>({
            type: 'train',
            batch,
          });
          decide('trained');
          trainedSamples.inc(batch.samples.length);
          budget.stepped();
          state.version = reply.version;
          // Throughput as the learner receives them: completion tokens of scored samples per second.
          const rollout = window.take();
          const step = reply.version;
          recordStep(metrics, step, rollout, staleness, reply.reports);
          emit({
            kind: 'step',
            step,
            total: totalSteps,
            report: versionReport(reply.reports),
            rollout,
            staleness,
          });
          await checkpoint('step');
          await publishVersion(step, reply.weights, [batch.id]);
          admission.trained(batch.samples.length);
          if (step >= totalSteps) stop('finished');
        })()),
      );

    const pipeline = scored
      .pipe(
        groupSamples({
          maxWaitMs: g.groupTimeoutMs,
          metrics,
          onIncomplete: (grp) =>
            resolve(grp.groupId, `incomplete_${grp.reason}`, 0, {
              [`incomplete_${grp.reason}`]: grp.samples.length,
            }),
        }),
        g.dynamicSampling
          ? dropZeroVariance({
              metrics,
              onDrop: (grp) =>
                resolve(grp.groupId, 'zero_variance', 0, { zero_variance: grp.samples.length }),
            })
          : identity,
        groupRelativeAdvantages({ ...advantageOptions(topology), metrics }),
        toGradientBatches({ limit: { samples: B }, metrics }),
        // A batch claims its groups as it arrives (a stale sweep leaves them to it), and is judged for
        // staleness as the learner takes it, by the version it trains at: one that waited behind another's
        // training is that much older. Groups it then no longer carries go back to the sweep.
        tap((batch) => {
          for (const id of groupIdsOf(batch)) claim(id);
        }),
        concatMap((batch) => {
          // Stopped or finished: train decides what is left (pending, or run_ended), unjudged.
          if (done) return train(batch);
          const admitted = stalenessGate.admit(batch, state.version);
          const kept = admitted ? groupIdsOf(admitted) : new Set<string>();
          for (const id of groupIdsOf(batch)) if (!kept.has(id)) unclaim(id);
          return admitted ? train(admitted) : EMPTY;
        }),
      )
      .subscribe({ error: fail });

    const source = kafkaSource({
      connection,
      run,
      edge: 'scored',
      groupId: `${run}.learner`,
      startOffsets: new Map(Object.entries(state.positions).map(([p, o]) => [Number(p), o])),
      // Samples hold their place until their group is decided (settle releases it; the ack waits for the
      // checkpoint): room for every round of generation one step may take, or the source would pause
      // with the step waiting on it.
      maxInFlight: Math.max(2_000, 2 * (g.maxGenerationRounds + eta + 3) * B),
      sessionTimeoutMs: ctx.sessionTimeoutMs,
      metrics,
    });
    const sourceSubscription = source.subscribe({ next: onDelivery, error: fail });
    ctx.ready?.();

    // Prompts whose samples never come (no rollout worker, or one that cannot sample them) are dropped.
    const sweep = setInterval(() => {
      const limit = Date.now() - g.groupTimeoutMs;
      for (const [id, p] of pending) {
        if (p.indices.size === 0 && p.publishedAt < limit) resolve(id, 'no_rollouts', 0);
      }
    }, 1_000);

    // --- prompts: as far ahead as the admission control allows -----------------------------------------
    const publishRound = (n: number) =>
      lock.run(async () => {
        const prompts: Prompt[] = [];
        const at = Date.now();
        while (prompts.length < n) {
          const c = cursor++;
          if (published.delete(c)) continue;
          const { example, epoch } = dataOrder.at(c);
          const base = runtime.prompt(example, `@${epoch}`);
          const prompt: Prompt = {
            ...base,
            // Not state.version: between a step and its version's publication that is a version no rollout
            // worker has yet (and, should this learner restart from the previous checkpoint, none will have
            // until it trains that step again), which would hold up the worker's whole batch.
            meta: { ...base.meta, cursor: c, minPolicyVersion: lastPublished },
          };
          prompts.push(prompt);
          pending.set(prompt.id, { cursor: c, publishedAt: at, indices: new Set(), deliveries: [] });
        }
        admission.started(n * G);
        admission.finished(n * G);
        await Promise.all(
          prompts.map((p) => publisher.publish(topics.prompts, 'Prompt', p, recordKey('Prompt', p, run))),
        );
        state.prompts.published += prompts.length;
        publishedPrompts.inc(prompts.length);
      });
    const round = { eta, groupSize: G, promptsPerStep: P };
    const publishing = (async () => {
      while (!done) {
        const n = nextRoundPrompts(admission.capacity, round);
        if (n === 0) {
          await Promise.race([admission$.wait(), stopChanges.wait()]);
          continue;
        }
        await publishRound(n);
      }
    })();
    publishing.catch(fail);

    while (!done) await stopChanges.wait();
    await publishing.catch(() => undefined);
    clearInterval(sweep);
    pipeline.unsubscribe();
    await training.catch(() => undefined);
    let stopFailure: unknown;
    try {
      if (!failure) {
        // Prompts still out when the last step is taken will not be trained: dropped, counted.
        if (stopReason === 'finished') {
          for (const [id, p] of [...pending]) {
            runEnded.inc(p.indices.size);
            resolve(id, 'run_ended', 0, { run_ended: p.indices.size });
          }
        }
        await checkpoint('stop');
      }
    } catch (error) {
      stopFailure = error;
    }
    // Also when the last checkpoint failed: the consumer leaves <run>.learner before the error goes up
    // (a member left behind would keep the next learner out until its session timed out).
    sourceSubscription.unsubscribe();
    ctx.signal.removeEventListener('abort', onAbort);
    if (failure || stopFailure) {
      await source.closed().catch(() => undefined);
      throw failure ?? stopFailure;
    }
    await source.closed();
    emit({ kind: 'stopped', role: 'learner', reason: stopReason });
    return {
      steps: state.version,
      ...(resumedFrom !== undefined ? { resumedFrom } : {}),
      prompts: {
        published: state.prompts.published,
        trained: state.prompts.trained,
        dropped: { ...state.prompts.dropped },
        pending: pending.size,
      },
      samples: { ...state.samples, dropped: { ...state.samples.dropped } },
      backend: withThreads(ready),
    };
  } finally {
    metricsLog.unsubscribe();
    await Promise.all([publisher.close().catch(() => {}), learner?.close(), admin.disconnect()]);
  }
}

/**
 * One learner per run: waits while the run's learner group has members (a learner killed a moment ago
 * stays a member until its session times out), and refuses to start if one is still there after
 * `waitMs`: two learners would publish different policies under the same version numbers.
 */
export async function noOtherLearner(
  admin: Admin,
  run: string,
  waitMs: number,
  signal: AbortSignal,
  onWait: () => void,
): Promise<void> {
  const group = `${run}.learner`;
  await pollUntil(
    async () => {
      const { groups } = await retrying(() => admin.describeGroups([group]));
      const members = groups[0]?.members ?? [];
      return members.length > 0 ? members : undefined;
    },
    {
      timeoutMs: waitMs,
      signal,
      onWait,
      timedOut: (members) => {
        const who = members.map((m) => `${m.clientId} on ${m.clientHost.replace(/^\//, '')}`).join(', ');
        return new Error(
          `Another learner is running for run "${run}": its consumer group ${group} has ${members.length === 1 ? 'a member' : `${members.length} members`} (${who}). ` +
            'Stop that one first, or give this run another --run name.',
        );
      },
    },
  );
}

/**
 * The newest PolicyVersion on the run's versions topic, or -1 when it has none. Reads only its tail: the
 * learner is its one writer and each version is at most `chunks` weight chunks and its PolicyVersion.
 */
export async function latestPublishedVersion(
  connection: RoleContext['options']['connection'],
  run: string,
  chunks: number,
): Promise<number> {
  const topic = topicName(run, 'versions');
  const admin = createKafka(connection).admin();
  await admin.connect();
  let from: Record<string, number>;
  try {
    from = Object.fromEntries(
      (await retrying(() => admin.fetchTopicOffsets(topic))).map((o) => [
        String(o.partition),
        Math.max(Number(o.low), Number(o.high) - 2 * (chunks + 1)),
      ]),
    );
  } finally {
    await admin.disconnect();
  }
  let latest = -1;
  for (const message of await readTopicSince(connection, topic, from)) {
    const decoded = decodeVersionsRecord(message);
    if (decoded.kind === 'message' && decoded.value.kind === 'policy') {
      latest = Math.max(latest, decoded.value.policy.version);
    }
  }
  return latest;
}
