// Rollouts per second end to end through Kafka: the rxrl transport (kafkaSink validating and batching ->
// kafkaSource parsing, validating, acking and committing) against plain kafkajs (producer -> consumer of the
// same bytes, nothing parsed), on the same broker in the same run. Producer and consumer share this process.
// Usage: npx tsx bench/kafka.ts [--records 20000] [--repeats 3] [--partitions 3]
// Uses the brokers in KAFKA_BROKERS, or starts a local broker (src/transport/kafka/broker.ts).
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Partitioners, logLevel } from 'kafkajs';
import { from } from 'rxjs';
import { SCHEMA_VERSION, type Rollout } from '../schemas/index.ts';
import { startLocalBroker, type LocalBroker } from '../src/transport/kafka/broker.ts';
import { createKafka, parseBrokers, type KafkaConnectionOptions } from '../src/transport/kafka/client.ts';
import { kafkaSink } from '../src/transport/kafka/sink.ts';
import { kafkaSource } from '../src/transport/kafka/source.ts';
import { createRunTopics, deleteRunTopics, topicName } from '../src/transport/kafka/topics.ts';

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '20000' },
    repeats: { type: 'string', default: '3' },
    partitions: { type: 'string', default: '3' },
  },
});
const N = Number(values.records);
const repeats = Number(values.repeats);
const partitions = Number(values.partitions);
const G = 8;

/** A rollout as a small model makes them: 64 prompt tokens, 64 completion tokens with their log-probs. */
function makeRollout(i: number): Rollout {
  const groupId = `prompt-${Math.floor(i / G)}`;
  const index = i % G;
  const tokens = (n: number, seed: number) =>
    Array.from({ length: n }, (_, t) => (seed * 7919 + t * 104729) % 50_000);
  return {
    schemaVersion: SCHEMA_VERSION,
    id: `${groupId}/${index}`,
    groupId,
    index,
    groupSize: G,
    prompt: {
      schemaVersion: SCHEMA_VERSION,
      id: groupId,
      task: 'arithmetic',
      text: `A conversation between User and Assistant. The user asks a question, and the Assistant solves it. User: What is ${i} + ${i + 17}? Assistant: <think>`,
      answer: String(2 * i + 17),
    },
    promptTokenIds: tokens(64, i),
    completionTokenIds: tokens(64, i + 1),
    completion: `First I add the units, then the tens: ${i} + ${i + 17} = ${2 * i + 17}.</think> <answer>${2 * i + 17}</answer>`,
    behaviourLogProbs: Array.from({ length: 64 }, (_, t) => -Math.abs(Math.sin(i * 64 + t)) * 3),
    policyVersion: 3,
    finishReason: 'eos',
  };
}

interface Measured {
  perSecond: number;
  /** CPU time of this process (producer and consumer) per record, in microseconds. */
  cpuMicros: number;
}

async function rxrlArm(
  connection: KafkaConnectionOptions,
  run: string,
  rollouts: Rollout[],
): Promise<Measured> {
  const source = kafkaSource({
    connection,
    run,
    edge: 'rollouts',
    groupId: `${run}.bench-${randomBytes(3).toString('hex')}`,
  });
  let received = 0;
  let done!: () => void;
  const all = new Promise<void>((resolve) => (done = resolve));
  const consuming = source.subscribe((delivery) => {
    delivery.ack();
    if (++received === rollouts.length) done();
  });
  await sleep(1_000); // the consumer joins its group
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const producing = from(rollouts)
    .pipe(kafkaSink({ connection, run, edge: 'rollouts' }))
    .subscribe();
  await all;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  producing.unsubscribe();
  consuming.unsubscribe();
  await source.closed();
  return { perSecond: rollouts.length / seconds, cpuMicros: (cpu.user + cpu.system) / rollouts.length };
}

async function plainArm(
  connection: KafkaConnectionOptions,
  topic: string,
  rollouts: Rollout[],
): Promise<Measured> {
  const kafka = createKafka(connection);
  const records = rollouts.map((r) => ({ key: r.groupId, value: Buffer.from(JSON.stringify(r)) }));
  const consumer = kafka.consumer({
    groupId: `${topic}.bench-${randomBytes(3).toString('hex')}`,
    maxWaitTimeInMs: 100,
  });
  let received = 0;
  let done!: () => void;
  const all = new Promise<void>((resolve) => (done = resolve));
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    eachBatch: async ({ batch }) => {
      received += batch.messages.length;
      if (received >= records.length) done();
    },
  });
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  await sleep(1_000);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  // The same batching as the publisher: at most 1000 records or ~1 MB per request, one request at a time.
  for (let start = 0; start < records.length;) {
    let bytes = 0;
    let end = start;
    while (end < records.length && end - start < 1000 && bytes + records[end]!.value.length <= 1_000_000) {
      bytes += records[end]!.value.length;
      end++;
    }
    await producer.sendBatch({ acks: -1, topicMessages: [{ topic, messages: records.slice(start, end) }] });
    start = end;
  }
  await all;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await producer.disconnect();
  await consumer.disconnect();
  return { perSecond: records.length / seconds, cpuMicros: (cpu.user + cpu.system) / records.length };
}

let broker: LocalBroker | undefined;
const configured = parseBrokers(process.env.KAFKA_BROKERS);
if (configured.length === 0) {
  console.log('KAFKA_BROKERS is unset: starting a local broker...');
  broker = await startLocalBroker({ log: console.log });
}
const connection: KafkaConnectionOptions = {
  brokers: configured.length > 0 ? configured : broker!.brokers,
  clientId: 'rxrl-bench',
  logLevel: logLevel.ERROR,
};

const rollouts = Array.from({ length: N }, (_, i) => makeRollout(i));
const bytes = JSON.stringify(rollouts[0]).length;
console.log(
  `${N} rollouts of ~${bytes} bytes (JSON), groups of ${G}, ${partitions} partitions, best of ${repeats}`,
);
const runs: string[] = [];
const format = (m: Measured) => `${m.perSecond.toFixed(0)}/s (${m.cpuMicros.toFixed(0)} us CPU each)`;
const results = { rxrl: [] as Measured[], plain: [] as Measured[] };
try {
  for (let repeat = 0; repeat < repeats; repeat++) {
    const run = `rxrl-bench-${Date.now().toString(36)}-${repeat}`;
    runs.push(run);
    await createRunTopics(connection, run, { partitions });
    await sleep(2_000); // new partitions' leaders settle, or the first produce is retried
    // Interleaved arms: a load change on the machine hits both. The plain arm uses an edge topic of the same
    // run that the rxrl arm leaves alone: same partitions, same broker.
    const plain = await plainArm(connection, topicName(run, 'prompts'), rollouts);
    const rxrl = await rxrlArm(connection, run, rollouts);
    results.plain.push(plain);
    results.rxrl.push(rxrl);
    const ratio = (rxrl.perSecond / plain.perSecond).toFixed(2);
    console.log(`  run ${repeat + 1}: rxrl ${format(rxrl)}; plain kafkajs ${format(plain)}; ratio ${ratio}`);
  }
  // Best of the runs: other load on the machine only ever slows a run down.
  const best = (arm: Measured[]) => Math.max(...arm.map((m) => m.perSecond));
  const leastCpu = (arm: Measured[]) => Math.min(...arm.map((m) => m.cpuMicros));
  console.log(`rxrl transport (validated, acked, committed): ${best(results.rxrl).toFixed(0)} rollouts/s`);
  console.log(`plain kafkajs (same bytes, no parsing):       ${best(results.plain).toFixed(0)} rollouts/s`);
  // The two runs of a pair ran back to back, under about the same load from the rest of the machine.
  const pairs = results.rxrl
    .map((rxrl, i) => rxrl.perSecond / results.plain[i]!.perSecond)
    .sort((a, b) => a - b);
  const median = pairs[Math.floor(pairs.length / 2)]!;
  console.log(
    `ratio: ${(best(results.rxrl) / best(results.plain)).toFixed(2)} of the best runs, ` +
      `${median.toFixed(2)} median of the pairs (goal >= 0.7)`,
  );
  // On a busy machine wall-clock rates swing with other load; CPU time per record much less so.
  const cpu = { rxrl: leastCpu(results.rxrl), plain: leastCpu(results.plain) };
  console.log(
    `CPU of this process per rollout: rxrl ${cpu.rxrl.toFixed(0)} us, plain ${cpu.plain.toFixed(0)} us ` +
      `(ratio ${(cpu.plain / cpu.rxrl).toFixed(2)}; the broker's CPU is not counted)`,
  );
} finally {
  for (const run of runs) await deleteRunTopics(connection, run).catch(() => {});
  await broker?.stop();
}
