/**
 * A run over Kafka against the real broker, with the tiny topology: the three roles in one process; then as
 * separate processes with a rollout worker killed mid-run; then with the learner killed and restarted from
 * its checkpoint. Each checks that every prompt published ends trained or dropped with a counted reason.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigResourceTypes, Kafka, logLevel } from 'kafkajs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { decodeMessage } from '../../src/transport/kafka/source.ts';
import { isCheckpoint } from '../../src/policy/checkpoint.ts';
import { KafkaPublisher } from '../../src/transport/kafka/sink.ts';
import { createRunTopics, deleteRunTopics, topicName } from '../../src/transport/kafka/topics.ts';
import { publishPolicyVersion } from '../../src/transport/kafka/weights.ts';
import { readTopicSince } from '../../src/run/kafka/common.ts';
import { runOverKafka, type KafkaRunEvent } from '../../src/run/kafka/index.ts';
import { defineTopology } from '../../src/topology/topology.ts';
import { connection, unique, waitFor } from './helpers.ts';
import {
  finished,
  killAll,
  learnerLog,
  learnerState,
  logs,
  promptIds,
  promptOutcomes,
  publishedVersions,
  startRole,
} from './runProcesses.ts';
import { tiny } from './runTopology.ts';
import { writeSlowReward } from '../fixtures.ts';

const root = mkdtempSync(join(tmpdir(), 'rxrl-kafka-run-'));
const cacheDir = join(root, 'cache');
const runs: string[] = [];
const newRun = (prefix: string) => {
  const run = unique(prefix);
  runs.push(run);
  return run;
};
const B = tiny.grpo.groupSize * tiny.grpo.promptsPerStep;

afterEach(killAll);

/** A learner of the run in this process, alone (no workers), in the run's own directory. */
const learnerAlone = (run: string, onEvent?: (e: KafkaRunEvent) => void) =>
  runOverKafka({
    topology: tiny,
    backend: 'wasm',
    role: 'learner',
    connection,
    run,
    runDir: join(root, run),
    cacheDir,
    sessionTimeoutMs: 6_000,
    ...(onEvent ? { onEvent } : {}),
  });
afterAll(async () => {
  await Promise.all(runs.map((run) => deleteRunTopics(connection, run).catch(() => {})));
  rmSync(root, { recursive: true, force: true });
});

// Generous limits: on a quiet 2-core machine each test takes one to two minutes, on a loaded one many more.
describe('runOverKafka', { timeout: 900_000 }, () => {
  it('role all: trains, publishes versions 0..steps once each, and decides every prompt it published', async () => {
    const run = newRun('run-all');
    const runDir = join(root, run);
    const events: KafkaRunEvent[] = [];
    const completions: string[] = [];
    const summary = await runOverKafka({
      topology: tiny,
      backend: 'wasm',
      role: 'all',
      connection,
      run,
      runDir,
      cacheDir,
      steps: 3,
      sessionTimeoutMs: 6_000,
      metricsIntervalMs: 1_000,
      workerId: 'w',
      onEvent: (e) => events.push(e),
      onCompletion: (sample) => completions.push(sample.groupId),
    });
    expect(summary.learner?.steps).toBe(3);
    expect(events.filter((e) => e.kind === 'step').map((e) => (e as { step: number }).step)).toEqual([
      1, 2, 3,
    ]);
    const { prompts, samples } = summary.learner!;
    expect(prompts.pending).toBe(0);
    expect(prompts.published).toBe(
      prompts.trained + Object.values(prompts.dropped).reduce((a, b) => a + b, 0),
    );
    expect(samples.trained).toBe(3 * B);
    expect(summary.rollout?.version).toBeGreaterThanOrEqual(2);
    expect(summary.reward?.scored).toBeGreaterThanOrEqual(3 * B);

    expect(await publishedVersions(run)).toEqual([0, 1, 2, 3]);
    // The versions topic the learner made keeps a few versions' bytes, not every version for a week.
    const admin = new Kafka({ ...connection, logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
    const { resources } = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [
        {
          type: ConfigResourceTypes.TOPIC,
          name: topicName(run, 'versions'),
          configNames: ['segment.bytes', 'retention.bytes'],
        },
      ],
    });
    await admin.disconnect();
    const config = Object.fromEntries(
      resources[0]!.configEntries.map((e) => [e.configName, Number(e.configValue)]),
    );
    expect(config['segment.bytes']).toBeGreaterThanOrEqual(1024 * 1024);
    expect(config['retention.bytes']).toBe(4 * config['segment.bytes']!);
    const state = learnerState(runDir);
    const ids = await promptIds(run);
    const outcomes = promptOutcomes(state, ids);
    expect(outcomes.undecided).toEqual([]);
    expect(outcomes.distinct).toBe(ids.length); // no prompt published twice
    expect(outcomes.distinct).toBe(prompts.published);
    expect(state.pending).toEqual([]);
    // The learner hands each scored sample it takes in to onCompletion (a dashboard's completions panel).
    expect(completions.length).toBeGreaterThanOrEqual(samples.trained);
    expect(completions.every((groupId) => ids.includes(groupId))).toBe(true);

    // The rollout worker reports the version it runs on <run>.metrics.
    const metrics = (await readTopicSince(connection, topicName(run, 'metrics'), {})).flatMap((record) => {
      const decoded = decodeMessage('Metric', record.value);
      return decoded.kind === 'message' ? [decoded.value] : [];
    });
    const reported = metrics.filter(
      (m) => m.name === 'rollout.policy_version' && m.labels?.['worker'] === 'w-rollout',
    );
    expect(reported.length).toBeGreaterThan(0);
    expect(Math.max(...reported.map((m) => m.value))).toBe(summary.rollout!.version);
  });

  it('a sample that comes after its group was dropped (incomplete, or none in time) counts as late, not as a duplicate', async () => {
    // Every twelfth score takes 1 s, past the groups' 0.3 s: those groups are dropped incomplete, and their
    // last sample reaches the learner afterwards, while the run (16 steps) goes on.
    const module = writeSlowReward(join(root, 'slow.ts'), 12, 1_000);
    const run = newRun('run-late');
    const summary = await runOverKafka({
      topology: defineTopology({
        ...tiny,
        rewards: [...tiny.rewards, { kind: 'module', path: module, weight: 0.5 }],
        grpo: { ...tiny.grpo, groupTimeoutMs: 300 },
      }),
      backend: 'wasm',
      role: 'all',
      connection,
      run,
      runDir: join(root, run),
      cacheDir,
      steps: 16,
      sessionTimeoutMs: 6_000,
    });
    const { prompts, samples } = summary.learner!;
    expect(prompts.dropped['incomplete_timeout']).toBeGreaterThan(0);
    expect(samples.dropped['late']).toBeGreaterThan(0);
    expect(samples.duplicates).toBe(0); // nothing was delivered twice
  });

  it('refuses to start a second learner of a run while one is a member of its group', async () => {
    const run = newRun('two-learners');
    // Stands in for a live learner: a member of <run>.learner that keeps its heartbeats.
    const kafka = new Kafka({ ...connection, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic: topicName(run, 'scored') }], waitForLeaders: true });
    await admin.disconnect();
    const member = kafka.consumer({ groupId: `${run}.learner`, sessionTimeout: 6_000 });
    await member.connect();
    await member.subscribe({ topic: topicName(run, 'scored') });
    await member.run({ eachMessage: async () => {} });
    try {
      await waitFor(async () => {
        const check = kafka.admin();
        await check.connect();
        const { groups } = await check.describeGroups([`${run}.learner`]);
        await check.disconnect();
        return (groups[0]?.members.length ?? 0) > 0;
      }, 'the stand-in learner to join its group');
      const events: KafkaRunEvent[] = [];
      await expect(learnerAlone(run, (e) => events.push(e))).rejects.toThrow(
        `Another learner is running for run "${run}": its consumer group ${run}.learner has a member`,
      );
      expect(events.some((e) => e.kind === 'waiting' && e.role === 'learner')).toBe(true);
      expect(events.some((e) => e.kind === 'version-published')).toBe(false); // it published nothing
    } finally {
      await member.disconnect();
    }
  });

  it("a learner started in a directory that is not the run's stops before writing a checkpoint there", async () => {
    const run = newRun('wrong-dir');
    await createRunTopics(connection, run);
    // The run's versions topic is at version 3: another learner, in another directory, published it.
    const publisher = new KafkaPublisher({ connection });
    await publishPolicyVersion(publisher, run, { schemaVersion: 1, version: 3, step: 3, time: Date.now() });
    await publisher.close();
    const runDir = join(root, run);
    await expect(learnerAlone(run)).rejects.toThrow(
      `${topicName(run, 'versions')} already has policy version 3, but the checkpoint in ${runDir} is at 0`,
    );
    expect(isCheckpoint(join(runDir, 'checkpoint'))).toBe(false);
  });

  it('processes: a rollout worker killed mid-run loses no prompt; the other takes over its partitions', async () => {
    const run = newRun('run-kill-worker');
    const runDir = join(root, run);
    const steps = 5;
    const learner = startRole('learner', { run, role: 'learner', runDir, cacheDir, steps });
    const doomed = startRole('doomed', { run, role: 'rollout', runDir, cacheDir, steps, workerId: 'doomed' });
    const reward = startRole('reward', { run, role: 'reward', runDir, cacheDir, steps });
    const generated = (r: typeof doomed) => r.events.filter((e) => e.kind === 'rollouts').length;
    await waitFor(
      () => generated(doomed) >= 1,
      () => `the doomed worker generating\n${logs(learner, doomed, reward)}`,
      400_000,
    );
    // The survivor joins only now. Started with the doomed worker, it could win every partition and finish
    // the run alone before the doomed one generated anything (seen on a fast machine): nothing to kill.
    const survivor = startRole('survivor', {
      run,
      role: 'rollout',
      runDir,
      cacheDir,
      steps,
      workerId: 'survivor',
    });
    const stepAtKill = learner.events.filter((e) => e.kind === 'step').length;
    doomed.process.kill('SIGKILL');
    await doomed.exited;
    const survivorBefore = generated(survivor);

    await finished(learner, 400_000, survivor, reward);
    await Promise.all([finished(survivor, 120_000), finished(reward, 120_000)]);
    expect(stepAtKill).toBeLessThan(steps);
    expect(generated(survivor)).toBeGreaterThan(survivorBefore);

    const summary = learner.summary!.learner!;
    expect(summary.steps).toBe(steps);
    expect(summary.prompts.pending).toBe(0);
    const state = learnerState(runDir);
    const ids = await promptIds(run);
    const outcomes = promptOutcomes(state, ids);
    expect(outcomes.undecided).toEqual([]);
    expect(outcomes.distinct).toBe(state.prompts.published);
    expect(state.prompts.published).toBe(state.prompts.trained + outcomes.dropped);
    expect(state.samples.trained).toBe(steps * B);
    expect(await publishedVersions(run)).toEqual([0, 1, 2, 3, 4, 5]);
    // The survivor reported each version it loaded.
    const loaded = survivor.events
      .filter((e) => e.kind === 'policy')
      .map((e) => (e as { version: number }).version);
    expect(loaded.length).toBeGreaterThan(0);
    expect(loaded).toEqual([...loaded].sort((a, b) => a - b));
  });

  it('processes: a learner killed after a checkpoint resumes from it; no version is trained or published twice', async () => {
    const run = newRun('run-kill-learner');
    const runDir = join(root, run);
    const steps = 5;
    const first = startRole('learner-1', { run, role: 'learner', runDir, cacheDir, steps });
    const rollout = startRole('rollout', { run, role: 'rollout', runDir, cacheDir, steps });
    const reward = startRole('reward', { run, role: 'reward', runDir, cacheDir, steps });
    await waitFor(
      () => first.events.some((e) => e.kind === 'checkpoint' && e.step >= 2),
      `the learner's checkpoint after step 2\n${logs(first, rollout, reward)}`,
      400_000,
    );
    first.process.kill('SIGKILL');
    await first.exited;
    const killedAt = first.events.filter((e) => e.kind === 'step').length;
    const before = learnerLog(runDir);

    const second = startRole('learner-2', { run, role: 'learner', runDir, cacheDir, steps });
    await finished(second, 400_000, rollout, reward);
    await Promise.all([finished(rollout, 120_000), finished(reward, 120_000)]);
    expect(killedAt).toBeLessThan(steps);

    const summary = second.summary!.learner!;
    expect(summary.steps).toBe(steps);
    expect(summary.resumedFrom).toBeGreaterThanOrEqual(2);
    const resume = second.events.find((e) => e.kind === 'resume');
    expect(resume).toMatchObject({ version: summary.resumedFrom });

    // Versions: each published once, in order, the restart included.
    expect(await publishedVersions(run)).toEqual([0, 1, 2, 3, 4, 5]);

    // The learner's log: versions checkpointed after steps strictly increase across both processes; the
    // second resumed from the last checkpoint the first wrote (or one it wrote without logging it).
    const log = learnerLog(runDir);
    const stepVersions = log
      .filter((l) => l['event'] === 'checkpoint' && l['reason'] === 'step')
      .map((l) => l['version'] as number);
    expect(stepVersions).toEqual([...new Set(stepVersions)].sort((a, b) => a - b));
    const lastBefore = before.filter((l) => l['event'] === 'checkpoint').at(-1)!;
    const resumed = log.find((l) => l['event'] === 'resume')!;
    expect(resumed['incarnation']).toBe(2);
    expect(resumed['version'] as number).toBeGreaterThanOrEqual(lastBefore['version'] as number);
    expect(resumed['version']).toBe(summary.resumedFrom);
    // Consumed positions never go back, and the group's commits never pass them.
    const checkpoints = log.filter((l) => l['event'] === 'checkpoint');
    for (let i = 1; i < checkpoints.length; i++) {
      const previous = checkpoints[i - 1]!['positions'] as Record<string, number>;
      const current = checkpoints[i]!['positions'] as Record<string, number>;
      for (const [partition, offset] of Object.entries(previous)) {
        expect(current[partition], `partition ${partition}`).toBeGreaterThanOrEqual(offset);
      }
    }
    const state = learnerState(runDir);
    expect(state.incarnation).toBe(2);
    const admin = new Kafka({ ...connection, logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
    try {
      const [committed] = await admin.fetchOffsets({
        groupId: `${run}.learner`,
        topics: [topicName(run, 'scored')],
      });
      for (const { partition, offset } of committed!.partitions) {
        if (Number(offset) >= 0) expect(Number(offset)).toBeLessThanOrEqual(state.positions[partition] ?? 0);
      }
    } finally {
      await admin.disconnect();
    }

    // Every prompt on the topic was published once and decided once.
    const ids = await promptIds(run);
    const outcomes = promptOutcomes(state, ids);
    expect(outcomes.undecided).toEqual([]);
    expect(outcomes.distinct).toBe(ids.length);
    expect(outcomes.distinct).toBe(state.prompts.published);
    expect(state.prompts.published).toBe(state.prompts.trained + outcomes.dropped);
    expect(state.pending).toEqual([]);
    expect(state.samples.trained).toBe(steps * B);
  });
});
