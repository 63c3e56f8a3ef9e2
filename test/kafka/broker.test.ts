/**
 * Integration tests against a real Kafka broker (started by test/setup/kafka.ts, or KAFKA_BROKERS):
 * they prove that kafkajs speaks to it for the things rxrl relies on.
 */
import { randomBytes } from 'node:crypto';
import { Kafka, Partitioners, logLevel, type Consumer, type KafkaMessage } from 'kafkajs';
import { afterAll, afterEach, describe, expect, inject, it } from 'vitest';

const kafka = new Kafka({
  clientId: 'rxrl-kafka-test',
  brokers: inject('kafkaBrokers'),
  logLevel: logLevel.WARN,
});
const admin = kafka.admin();
const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
const consumers: Consumer[] = [];
const topics: string[] = [];

const unique = (prefix: string) =>
  `rxrl-test-${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;

async function createTopic(prefix: string, numPartitions: number): Promise<string> {
  const topic = unique(prefix);
  topics.push(topic);
  await admin.connect();
  expect(await admin.createTopics({ topics: [{ topic, numPartitions }], waitForLeaders: true })).toBe(true);
  return topic;
}

function newConsumer(groupId: string, autoCommit = true): { consumer: Consumer; autoCommit: boolean } {
  const consumer = kafka.consumer({ groupId });
  consumers.push(consumer);
  return { consumer, autoCommit };
}

interface Received {
  partition: number;
  offset: number;
  key: string;
  value: string;
}

/** Subscribes from the beginning (or the committed offset) and resolves once `count` records arrived. */
async function consume(
  { consumer, autoCommit }: { consumer: Consumer; autoCommit: boolean },
  topic: string,
  count: number,
  onRecord?: (record: Received) => Promise<void>,
): Promise<Received[]> {
  const received: Received[] = [];
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await new Promise<void>((done, fail) => {
    const timer = setTimeout(
      () => fail(new Error(`only ${received.length}/${count} records arrived`)),
      45_000,
    );
    consumer
      .run({
        autoCommit,
        eachMessage: async ({ partition, message }) => {
          const record = toReceived(partition, message);
          received.push(record);
          await onRecord?.(record);
          if (received.length >= count) {
            clearTimeout(timer);
            done();
          }
        },
      })
      .catch(fail);
  });
  return received;
}

function toReceived(partition: number, message: KafkaMessage): Received {
  return {
    partition,
    offset: Number(message.offset),
    key: message.key?.toString() ?? '',
    value: message.value?.toString() ?? '',
  };
}

afterEach(async () => {
  await Promise.all(consumers.splice(0).map((consumer) => consumer.disconnect()));
});

afterAll(async () => {
  await producer.disconnect();
  // Matters only for a shared KAFKA_BROKERS cluster; a local broker is thrown away anyway.
  if (topics.length > 0) await admin.deleteTopics({ topics }).catch(() => {});
  await admin.disconnect();
});

describe('real Kafka broker', () => {
  it('creates a topic with 3 partitions and describes it', async () => {
    const topic = await createTopic('admin', 3);

    expect(await admin.listTopics()).toContain(topic);
    const { topics: described } = await admin.fetchTopicMetadata({ topics: [topic] });
    expect(described).toHaveLength(1);
    expect(described[0]!.name).toBe(topic);
    const partitions = [...described[0]!.partitions].sort((a, b) => a.partitionId - b.partitionId);
    expect(partitions.map((partition) => partition.partitionId)).toEqual([0, 1, 2]);
    for (const partition of partitions) {
      expect(partition.partitionErrorCode).toBe(0);
      expect(partition.leader).toBeGreaterThanOrEqual(0);
      expect(partition.isr).toContain(partition.leader);
    }
    const offsets = await admin.fetchTopicOffsets(topic);
    expect(offsets.map((offset) => [offset.partition, offset.high]).sort()).toEqual([
      [0, '0'],
      [1, '0'],
      [2, '0'],
    ]);
  });

  it('delivers 100 keyed records to a consumer group, each key on a single partition', async () => {
    const topic = await createTopic('keyed', 3);
    const groups = Array.from({ length: 10 }, (_, group) => `group-${group}`);
    // Interleaved like concurrent rollouts: group-0 #0, group-1 #0, ..., group-9 #9.
    const messages = Array.from({ length: 100 }, (_, i) => {
      const key = groups[i % groups.length]!;
      return { key, value: JSON.stringify({ group: key, index: Math.floor(i / groups.length) }) };
    });
    await producer.connect();
    const sent = await producer.send({ topic, messages });
    expect(sent.every((metadata) => metadata.errorCode === 0)).toBe(true);

    const received = await consume(newConsumer(unique('keyed-group')), topic, 100);

    expect(received.map((record) => record.value).sort()).toEqual(messages.map((m) => m.value).sort());
    const partitionsByKey = new Map<string, Set<number>>();
    for (const record of received) {
      expect(JSON.parse(record.value).group).toBe(record.key);
      partitionsByKey.set(record.key, (partitionsByKey.get(record.key) ?? new Set()).add(record.partition));
    }
    expect([...partitionsByKey.keys()].sort()).toEqual([...groups].sort());
    for (const [, partitions] of partitionsByKey) expect(partitions.size).toBe(1);
    // The keys spread over partitions (the hash is deterministic), and order holds within each key.
    expect(new Set(received.map((record) => record.partition)).size).toBeGreaterThan(1);
    for (const key of groups) {
      const indexes = received.filter((r) => r.key === key).map((r) => JSON.parse(r.value).index as number);
      expect(indexes).toEqual(Array.from({ length: 10 }, (_, i) => i));
    }
  });

  it('resumes a consumer group after its committed offset, without re-delivering committed records', async () => {
    const topic = await createTopic('commit', 1);
    const groupId = unique('commit-group');
    await producer.connect();
    await producer.send({
      topic,
      messages: Array.from({ length: 20 }, (_, i) => ({ key: 'k', value: `record-${i}` })),
    });

    // The first consumer may read past record 9, but commits only what it "made durable": 0..9.
    const first = newConsumer(groupId, false);
    const firstSeen = await consume(first, topic, 10, async (record) => {
      if (record.offset === 9) {
        await first.consumer.commitOffsets([{ topic, partition: 0, offset: '10' }]);
      }
    });
    expect(firstSeen.slice(0, 10).map((record) => record.offset)).toEqual([...Array(10).keys()]);
    await first.consumer.disconnect();
    const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
    expect(committed[0]!.partitions).toEqual([expect.objectContaining({ partition: 0, offset: '10' })]);

    const second = newConsumer(groupId);
    const secondSeen = await consume(second, topic, 10);
    // Wait a little for anything that should not come (a redelivered record 0..9).
    await new Promise((done) => setTimeout(done, 1_000));
    expect(secondSeen.map((record) => record.offset)).toEqual([...Array(10).keys()].map((i) => i + 10));
    expect(secondSeen.map((record) => record.value)).toEqual(
      [...Array(10).keys()].map((i) => `record-${i + 10}`),
    );
  });
});
