/**
 * The rollout role: a consumer group on `<run>.prompts` sampling G completions per prompt with the latest
 * policy from `<run>.versions`, publishing them to `<run>.rollouts` (keyed by group) and acking the prompts
 * only once their rollouts are durable. Generation runs on a worker thread, so the consumer keeps its
 * heartbeats while sampling. A prompt names the oldest version it may be sampled with
 * (`meta.minPolicyVersion`): the worker waits for that version's weights before sampling it.
 */
import { randomUUID } from 'node:crypto';
import type { Prompt } from '../../../schemas/index.ts';
import { CharTokenizer, type Tokenizer } from '../../policy/tokenizer.ts';
import { KafkaPublisher } from '../../transport/kafka/sink.ts';
import { kafkaSource, type Delivery } from '../../transport/kafka/source.ts';
import { recordKey, topicName } from '../../transport/kafka/topics.ts';
import { policyWeights, type PolicyWeights } from '../../transport/kafka/weights.ts';
import { modelConfig } from '../pretrain.ts';
import { taskRuntime } from '../taskRuntime.ts';
import type { GeneratorReply, GeneratorRequest } from '../workers/protocol.ts';
import { WorkerClient } from '../workers/rpc.ts';
import { buffersOf, type WeightArrays } from '../workers/weights.ts';
import { Changes, deleteGroups, hash31 } from './common.ts';
import type { RoleContext, RolloutSummary } from './types.ts';
import { decodeWeights } from './weights.ts';

/**
 * Why this worker cannot sample a prompt (its tokenizer cannot read the text, or the text leaves no room
 * in the model's context), or undefined. Such a prompt is dead-lettered, not handed to the generator,
 * whose failure would end this worker and then, the prompt unacked, every other worker it reached.
 */
export function promptProblem(
  tokenizer: Tokenizer,
  contextLength: number,
): (prompt: Prompt) => string | undefined {
  return (prompt) => {
    let tokens: number;
    try {
      tokens = tokenizer.encode(prompt.text).length;
    } catch (error) {
      return `prompt ${prompt.id}: ${(error as Error).message}`;
    }
    if (tokens === 0) return `prompt ${prompt.id}: its text is empty`;
    if (tokens >= contextLength)
      return `prompt ${prompt.id}: ${tokens} tokens leave no room for a completion in the model's context of ${contextLength}`;
    return undefined;
  };
}

/** The oldest policy version a prompt may be sampled with (0 when it does not say). */
export function minPolicyVersion(prompt: Prompt): number {
  const v = prompt.meta?.['minPolicyVersion'];
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : 0;
}

export async function runRollout(ctx: RoleContext): Promise<RolloutSummary> {
  const { options, run, metrics, workerId } = ctx;
  const { topology, connection } = options;
  const G = topology.grpo.groupSize;
  const perCall = options.promptsPerCall ?? topology.grpo.promptsPerStep;
  if (!Number.isInteger(perCall) || perCall < 1) {
    throw new Error(`promptsPerCall must be a positive integer, got ${perCall}`);
  }
  const runtime = taskRuntime(topology);
  const tokenizer = new CharTokenizer(runtime.alphabet);
  const rolloutsTopic = topicName(run, 'rollouts');
  const labels = { worker: workerId };
  const versionGauge = metrics.gauge('rollout.policy_version', labels);
  const promptsDone = metrics.counter('rollout.prompts', labels);
  const samplesDone = metrics.counter('rollout.samples', labels);
  const tokensDone = metrics.counter('rollout.tokens', labels);

  const publisher = new KafkaPublisher({ connection, metrics });
  const weightsGroup = `${run}.weights.${randomUUID()}`;
  const weights = policyWeights({
    connection,
    run,
    groupId: weightsGroup,
    sessionTimeoutMs: ctx.sessionTimeoutMs,
    metrics,
  });
  const prompts = kafkaSource({
    connection,
    run,
    edge: 'prompts',
    groupId: `${run}.rollout`,
    check: promptProblem(tokenizer, topology.model.contextLength),
    // A few calls' worth: prompts this worker holds are not shared with the others of the group.
    maxInFlight: 2 * perCall,
    resumeAt: perCall,
    sessionTimeoutMs: ctx.sessionTimeoutMs,
    metrics,
  });

  const changes = new Changes();
  const queue: Delivery<Prompt>[] = [];
  let latest: PolicyWeights | undefined;
  let finished = false;
  let failure: Error | undefined;
  const fail = (error: Error) => {
    failure ??= error;
    changes.notify();
  };
  const onAbort = () => changes.notify();
  ctx.signal.addEventListener('abort', onAbort);
  const subscriptions = [
    weights.subscribe({
      next: (w) => {
        latest = w;
        if (w.policy.version >= ctx.totalSteps) finished = true;
        changes.notify();
      },
      error: fail,
    }),
    prompts.subscribe({
      next: (delivery) => {
        queue.push(delivery);
        changes.notify();
      },
      error: fail,
    }),
  ];
  const stop = () => finished || ctx.signal.aborted || failure !== undefined;

  let generator: WorkerClient<GeneratorRequest, GeneratorReply> | undefined;
  let backend = '';
  let loaded = -1;
  let promptCount = 0;
  let rolloutCount = 0;

  const load = async (w: PolicyWeights) => {
    if (!w.weights) {
      throw new Error(
        `Policy version ${w.policy.version} was published without inline weights (only a checkpoint ` +
          `reference, ${w.policy.checkpoint}); rollout workers need the weights on ${topicName(run, 'versions')}`,
      );
    }
    const arrays: WeightArrays = decodeWeights(w.weights);
    const transfer = [...new Set(buffersOf(arrays))];
    if (!generator) {
      generator = new WorkerClient<GeneratorRequest, GeneratorReply>(
        'generator',
        new URL('../workers/generator.worker.ts', import.meta.url),
      );
      const ready = await generator.request<Extract<GeneratorReply, { type: 'ready' }>>(
        {
          type: 'init',
          backend: options.backend,
          model: modelConfig(topology, tokenizer),
          tokenizer: tokenizer.spec(),
          weights: arrays,
          version: w.policy.version,
        },
        transfer,
      );
      backend = ready.backend;
      ctx.emit({ kind: 'backend', role: 'rollout', backend });
    } else {
      await generator.request({ type: 'weights', version: w.policy.version, weights: arrays }, transfer);
    }
    loaded = w.policy.version;
    versionGauge.set(loaded);
    metrics.flush();
    ctx.emit({ kind: 'policy', worker: workerId, version: loaded });
  };

  try {
    let toldWaiting = false;
    while (!stop()) {
      if (queue.length === 0 || latest === undefined) {
        if (latest === undefined && !toldWaiting) {
          ctx.emit({ kind: 'waiting', role: 'rollout', what: 'the first policy version' });
          toldWaiting = true;
        }
        await changes.wait();
        continue;
      }
      const batch = queue.splice(0, perCall);
      // Several deliveries of one prompt (a re-delivery still queued) are sampled once.
      const unique = [...new Map(batch.map((d) => [d.value.id, d.value])).values()];
      const need = Math.max(...unique.map(minPolicyVersion));
      if (latest.policy.version < need) {
        ctx.emit({ kind: 'waiting', role: 'rollout', what: `policy version ${need}` });
      }
      while (!stop() && latest.policy.version < need) await changes.wait();
      if (stop()) break;
      if (latest.policy.version !== loaded) await load(latest);
      const reply = await generator!.request<Extract<GeneratorReply, { type: 'rollouts' }>>({
        type: 'generate',
        prompts: unique,
        groupSize: G,
        sampling: topology.sampling,
        seed: hash31(`${topology.seed}:${unique[0]!.id}:${loaded}`),
      });
      await Promise.all(
        reply.rollouts.map((r) =>
          publisher.publish(rolloutsTopic, 'Rollout', r, recordKey('Rollout', r, run)),
        ),
      );
      for (const delivery of batch) delivery.ack();
      promptCount += unique.length;
      rolloutCount += reply.rollouts.length;
      promptsDone.inc(unique.length);
      samplesDone.inc(reply.rollouts.length);
      tokensDone.inc(reply.tokens);
      metrics.record(
        'rollout/tokens_per_second',
        reply.tokens / Math.max(reply.seconds, 1e-9),
        undefined,
        labels,
      );
      ctx.emit({
        kind: 'rollouts',
        worker: workerId,
        prompts: unique.length,
        rollouts: reply.rollouts.length,
        version: reply.version,
        seconds: reply.seconds,
      });
    }
    if (failure) throw failure;
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    for (const subscription of subscriptions) subscription.unsubscribe();
    await Promise.all([
      prompts.closed().catch(() => {}),
      weights.closed().catch(() => {}),
      publisher.close().catch(() => {}),
      generator?.close(),
    ]);
    await deleteGroups(connection, [weightsGroup]);
  }
  ctx.emit({ kind: 'stopped', role: 'rollout', reason: finished ? 'finished' : 'signal' });
  return { worker: workerId, prompts: promptCount, rollouts: rolloutCount, version: loaded, backend };
}
