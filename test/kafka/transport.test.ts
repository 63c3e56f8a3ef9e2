/**
 * The Kafka transport against a real broker: validated round trips, dead letters, backpressure,
 * at-least-once delivery across reconnects, and policy weights in chunks.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Kafka, Partitioners, logLevel } from 'kafkajs';
import { from, lastValueFrom, of, take, tap, toArray } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import { DeadLetter, SCHEMA_VERSION, type PolicyVersion, type Prompt } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { KafkaPublisher, kafkaSink } from '../../src/transport/kafka/sink.ts';
import { kafkaSource, type Delivery } from '../../src/transport/kafka/source.ts';
import { topicName } from '../../src/transport/kafka/topics.ts';
import {
  policyWeights,
  publishPolicyVersion,
  weightsChunkRecord,
  weightsChunks,
} from '../../src/transport/kafka/weights.ts';
import {
  connection,
  createRun,
  deleteRuns,
  prompt,
  readTopic,
  rollout,
  rollouts,
  unique,
  waitFor,
} from './helpers.ts';

const kafka = new Kafka({ ...connection, logLevel: logLevel.WARN });
const admin = kafka.admin();

afterAll(async () => {
  await deleteRuns();
  await admin.disconnect();
});

/** Committed offset of each partition of a topic for a group, next to the topic's end. */
async function commitsAndEnds(groupId: string, topic: string) {
  await admin.connect();
  const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
  const ends = await admin.fetchTopicOffsets(topic);
  const byPartition = (rows: { partition: number; offset: string }[]) =>
    rows.map((row) => [row.partition, Number(row.offset)]).sort((a, b) => a[0]! - b[0]!);
  return {
    committed: byPartition(committed!.partitions),
    ends: byPartition(ends.map((end) => ({ partition: end.partition, offset: end.high }))),
  };
}

/** Whether the group has committed every partition of the topic up to its end. */
async function allCommitted(groupId: string, topic: string): Promise<boolean> {
  const { committed, ends } = await commitsAndEnds(groupId, topic);
  return JSON.stringify(committed) === JSON.stringify(ends);
}

const byId = (a: { id: string }, b: { id: string }) => a.id.localeCompare(b.id);

async function publishPrompts(run: string, count: number): Promise<Prompt[]> {
  const prompts = Array.from({ length: count }, (_, i) => prompt(`p${i}`));
  await lastValueFrom(from(prompts).pipe(kafkaSink({ connection, run, edge: 'prompts' }), toArray()));
  return prompts;
}

describe('kafkaSink -> kafkaSource', () => {
  it('round-trips validated rollouts, keeps each group on one partition and commits what was acked', async () => {
    const run = await createRun('roundtrip', 3);
    const sent = rollouts(48);

    const durable = await lastValueFrom(
      from(sent).pipe(kafkaSink({ connection, run, edge: 'rollouts' }), toArray()),
    );
    expect(durable).toEqual(sent);

    const groupId = unique('roundtrip');
    const source = kafkaSource({ connection, run, edge: 'rollouts', groupId });
    const received = await lastValueFrom(
      source.pipe(
        tap((delivery) => delivery.ack()),
        take(sent.length),
        toArray(),
      ),
    );
    await source.closed();

    expect(received.map((delivery) => delivery.value).sort(byId)).toEqual([...sent].sort(byId));
    const partitionsByGroup = new Map<string, Set<number>>();
    for (const { value, partition, key } of received) {
      expect(key).toBe(value.groupId);
      partitionsByGroup.set(
        value.groupId,
        (partitionsByGroup.get(value.groupId) ?? new Set()).add(partition),
      );
    }
    expect([...partitionsByGroup.values()].every((partitions) => partitions.size === 1)).toBe(true);
    expect(new Set(received.map((delivery) => delivery.partition)).size).toBeGreaterThan(1);
    const { committed, ends } = await commitsAndEnds(groupId, topicName(run, 'rollouts'));
    expect(committed).toEqual(ends);
  });

  it('refuses to publish a message that fails its schema, naming the field', async () => {
    const run = await createRun('refuse', 1);
    const bad = { ...rollout('g', 0), behaviourLogProbs: [] };

    await expect(
      lastValueFrom(of(bad).pipe(kafkaSink({ connection, run, edge: 'rollouts' }))),
    ).rejects.toThrow(
      /Refusing to publish an invalid Rollout to rxrl-test-refuse-.*\.rollouts: .*behaviourLogProbs: .*one entry per completion token/,
    );
  });

  it("dead-letters bad JSON, schema failures and what the consumer's check refuses, with the reason and original bytes, and goes on", async () => {
    const run = await createRun('dlq', 2);
    const topic = topicName(run, 'rollouts');
    const valid = rollouts(20);
    const badJson = 'not json {';
    const badSchema = JSON.stringify({ ...rollout('g-bad', 9), index: 9 });
    const badBytes = Buffer.from([0xff, 0xfe, 0x00, 0x7b]);
    // Not UTF-8, so kept as base64: a third larger than the record, over the 1 MB a topic takes by default.
    const bigBadBytes = Buffer.alloc(900_000, 0xff);
    // Valid, but refused by this consumer's own check.
    const unusable = JSON.stringify(rollout('g-unusable', 0));
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
    await producer.connect();
    await producer.send({
      topic,
      messages: [
        ...valid.slice(0, 10).map((r) => ({ key: r.groupId, value: JSON.stringify(r) })),
        { key: 'bad-json', value: badJson },
        { key: 'bad-schema', value: badSchema },
        { key: 'bad-bytes', value: badBytes },
        { key: 'big-bad-bytes', value: bigBadBytes },
        { key: 'unusable', value: unusable },
        ...valid.slice(10).map((r) => ({ key: r.groupId, value: JSON.stringify(r) })),
      ],
    });
    await producer.disconnect();

    const metrics = new Metrics({ run });
    const groupId = unique('dlq');
    const source = kafkaSource({
      connection,
      run,
      edge: 'rollouts',
      groupId,
      metrics,
      check: (r) =>
        r.groupId === 'g-unusable' ? `group ${r.groupId} is not one this consumer can use` : undefined,
    });
    const received: Delivery<unknown>[] = [];
    const subscription = source.subscribe((delivery) => {
      received.push(delivery);
      delivery.ack();
    });
    const count = (name: string) => metrics.snapshot()[`${name}{topic=${topic}}`] ?? 0;
    // Dead letters count as acked once written: everything gets committed.
    // At least once: a consumer kafkajs restarts (a partition not yet hosted, right after the topic was
    // made) may deliver a record again; what counts is that each valid record came.
    const validIds = () => new Set(received.map((delivery) => (delivery.value as { id: string }).id));
    await waitFor(
      () => validIds().size === 20 && count('kafka.commits') > 0,
      () =>
        `20 valid records: ${received.length} delivered (${validIds().size} distinct), ` +
        `${count('kafka.consumed')} consumed, ${count('kafka.dead_letters')} dead letters, ${count('kafka.commits')} commits`,
    );
    await waitFor(() => count('kafka.dead_letters') >= 5, 'five dead letters');
    const deadLetters = (await readTopic(topicName(run, 'dlq'), 5)).map((m) =>
      DeadLetter.parse(JSON.parse(m.value!.toString())),
    );
    await waitFor(() => allCommitted(groupId, topic), 'all offsets committed');
    subscription.unsubscribe();
    await source.closed();

    expect(received.map((delivery) => delivery.value)).toEqual(expect.arrayContaining(valid));
    expect(count('kafka.consumed')).toBeGreaterThanOrEqual(25);
    expect(count('kafka.delivered') + count('kafka.dead_letters')).toBe(count('kafka.consumed'));
    const byKey = Object.fromEntries(deadLetters.map((letter) => [letter.key, letter]));
    expect(byKey['bad-json']).toMatchObject({ source: topic, payload: badJson, encoding: 'utf8' });
    expect(byKey['bad-json']!.reason).toMatch(/^Not valid JSON: /);
    expect(byKey['bad-schema']).toMatchObject({ source: topic, schema: 'Rollout', payload: badSchema });
    expect(byKey['bad-schema']!.issues).toEqual([expect.objectContaining({ path: 'index' })]);
    expect(byKey['bad-bytes']).toMatchObject({ encoding: 'base64', payload: badBytes.toString('base64') });
    expect(byKey['big-bad-bytes']).toMatchObject({
      encoding: 'base64',
      payload: bigBadBytes.toString('base64'),
    });
    expect(byKey['unusable']).toMatchObject({
      source: topic,
      payload: unusable,
      reason: 'group g-unusable is not one this consumer can use',
    });
  });

  it('pauses a fast topic for a slow consumer: never more than maxInFlight unacked, nothing lost', async () => {
    const run = await createRun('backpressure', 2);
    const total = 300;
    const maxInFlight = 25;
    const metrics = new Metrics({ run });
    const source = kafkaSource({
      connection,
      run,
      edge: 'prompts',
      groupId: unique('slow'),
      maxInFlight,
      metrics,
      maxWaitTimeMs: 20, // how soon a resume is noticed: a faster test
    });
    let unacked = 0;
    let mostUnacked = 0;
    const seen: string[] = [];
    // Slow: every record takes 3 ms before its effect is durable.
    const subscription = source.subscribe((delivery) => {
      seen.push(delivery.value.id);
      mostUnacked = Math.max(mostUnacked, ++unacked);
      setTimeout(() => {
        unacked--;
        delivery.ack();
      }, 3);
    });

    await publishPrompts(run, total);
    const seenWhenProduced = seen.length;
    await waitFor(() => seen.length >= total, `${total} records`, 30_000);
    await sleep(300); // anything extra (a duplicate) would show up now
    subscription.unsubscribe();
    await source.closed();

    expect(seenWhenProduced).toBeLessThan(total);
    expect(mostUnacked).toBe(maxInFlight);
    expect(metrics.snapshot()[`kafka.pauses{topic=${topicName(run, 'prompts')}}`]).toBeGreaterThan(0);
    expect(seen).toHaveLength(total);
    expect(new Set(seen).size).toBe(total);
  });

  it("release frees a record's place without committing past it: a consumer holding records past maxInFlight still gets them all", async () => {
    const run = await createRun('release', 2);
    const total = 60;
    await publishPrompts(run, total);
    const topic = topicName(run, 'prompts');
    const groupId = unique('release');
    const source = kafkaSource({ connection, run, edge: 'prompts', groupId, maxInFlight: 10, resumeAt: 5 });
    const held: Delivery<Prompt>[] = [];
    const subscription = source.subscribe((delivery) => {
      held.push(delivery);
      delivery.release(); // decided, not yet durable
    });
    // Without release the source would stop at 10 and wait.
    await waitFor(() => held.length === total, `${total} records, released and not acked`);
    await sleep(500); // a commit, were there one, would have happened now
    const before = await commitsAndEnds(groupId, topic);
    expect(before.committed.every(([, offset]) => (offset ?? -1) <= 0)).toBe(true); // nothing committed past
    for (const delivery of held) delivery.ack();
    await waitFor(() => allCommitted(groupId, topic), 'all offsets committed once acked');
    subscription.unsubscribe();
    await source.closed();
  });

  it('closed() waits for subscriptions still live: it settles once they are unsubscribed and their consumer has left', async () => {
    const run = await createRun('closed', 1);
    await publishPrompts(run, 5);
    const groupId = unique('closed');
    const source = kafkaSource({ connection, run, edge: 'prompts', groupId });
    const seen: string[] = [];
    const subscription = source.subscribe((delivery) => {
      seen.push(delivery.value.id);
      delivery.ack();
    });
    await waitFor(() => seen.length === 5, '5 records');
    let settled = false;
    const closed = source.closed().then(() => (settled = true));
    await sleep(300);
    expect(settled).toBe(false); // the consumer is still a member of its group
    subscription.unsubscribe();
    await closed;
    await admin.connect();
    const { groups } = await admin.describeGroups([groupId]);
    expect(groups[0]?.members ?? []).toEqual([]);
  });

  it('re-delivers exactly the unacked records to the next consumer of the group', async () => {
    const run = await createRun('redelivery', 2);
    const prompts = await publishPrompts(run, 40);
    const groupId = unique('redelivery');

    const first = kafkaSource({ connection, run, edge: 'prompts', groupId });
    const deliveries: Delivery<Prompt>[] = [];
    const firstSubscription = first.subscribe((delivery) => deliveries.push(delivery));
    await waitFor(() => deliveries.length === prompts.length, 'all records');
    // Ack the first half of each partition: a contiguous prefix that can be committed.
    const acked = new Set<string>();
    for (const partition of new Set(deliveries.map((delivery) => delivery.partition))) {
      const ofPartition = deliveries.filter((delivery) => delivery.partition === partition);
      for (const delivery of ofPartition.slice(0, Math.ceil(ofPartition.length / 2))) {
        delivery.ack();
        acked.add(delivery.value.id);
      }
    }
    firstSubscription.unsubscribe();
    await first.closed();
    const unacked = prompts.map((p) => p.id).filter((id) => !acked.has(id));

    const second = kafkaSource({ connection, run, edge: 'prompts', groupId });
    const redelivered: string[] = [];
    const secondSubscription = second.subscribe((delivery) => {
      redelivered.push(delivery.value.id);
      delivery.ack();
    });
    await waitFor(() => redelivered.length >= unacked.length, 'the unacked records');
    await sleep(1_000); // an acked record coming back would show up now
    secondSubscription.unsubscribe();
    await second.closed();

    expect(acked.size).toBeGreaterThan(0);
    expect(redelivered.sort()).toEqual(unacked.sort());
  });
});

describe('policy weights on the versions topic', () => {
  const version = (n: number, checkpoint?: string): PolicyVersion => ({
    schemaVersion: SCHEMA_VERSION,
    version: n,
    step: n,
    time: 1_700_000_000_000 + n,
    ...(checkpoint ? { checkpoint } : {}),
  });

  it('chunks weights over 1 MB, reassembles complete versions and skips incomplete and old ones', async () => {
    const run = await createRun('weights');
    const topic = topicName(run, 'versions');
    const big = randomBytes(2_500_000);
    const small = randomBytes(1_000);
    const publisher = new KafkaPublisher({ connection });
    await publishPolicyVersion(publisher, run, version(1), big);
    await publishPolicyVersion(publisher, run, version(2, 'runs/w/checkpoint-2'));
    // Version 3 lost its second chunk (say, the learner died while publishing): never yielded.
    const [firstOfThree] = weightsChunks(3, randomBytes(1_200_000));
    await publisher.publishRecord(topic, weightsChunkRecord(run, firstOfThree!));
    await publisher.publish(topic, 'PolicyVersion', version(3), run);
    await publishPolicyVersion(publisher, run, version(1), small); // old: already superseded
    await publishPolicyVersion(publisher, run, version(4), small);
    await publisher.close();

    const metrics = new Metrics({ run });
    const weights = policyWeights({ connection, run, metrics });
    const complete = await lastValueFrom(weights.pipe(take(3), toArray()));
    await weights.closed();

    expect(complete.map((w) => w.policy)).toEqual([
      version(1),
      version(2, 'runs/w/checkpoint-2'),
      version(4),
    ]);
    expect(Buffer.compare(Buffer.from(complete[0]!.weights!), big)).toBe(0);
    expect(complete[1]!.weights).toBeUndefined();
    expect(Buffer.compare(Buffer.from(complete[2]!.weights!), small)).toBe(0);
    expect(metrics.snapshot()).toMatchObject({
      'weights.incomplete': 1,
      'weights.old': 1,
      'weights.corrupt': 0,
    });

    // A plain PolicyVersion source on the same topic skips the chunks.
    const versionsMetrics = new Metrics({ run });
    const versions = kafkaSource({
      connection,
      run,
      edge: 'versions',
      groupId: unique('versions'),
      metrics: versionsMetrics,
    });
    const policies = await lastValueFrom(
      versions.pipe(
        tap((delivery) => delivery.ack()),
        take(5),
        toArray(),
      ),
    );
    await versions.closed();
    expect(policies.map((delivery) => delivery.value.version)).toEqual([1, 2, 3, 1, 4]);
    const chunks = 3 + 1 + 1 + 1; // 2.5 MB in 900 KiB chunks, one of version 3, one each of the small ones
    expect(versionsMetrics.snapshot()[`kafka.skipped{topic=${topic}}`]).toBe(chunks);
    expect(versionsMetrics.snapshot()[`kafka.dead_letters{topic=${topic}}`]).toBe(0);
  });
});
