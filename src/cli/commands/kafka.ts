/**
 * Kafka commands of the CLI: a run's topics (create, describe, delete), feeding prompts from a JSONL file
 * into a topic, and tailing a topic as JSON lines.
 */
import { createReadStream, existsSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { createInterface } from 'node:readline';
import { InvalidArgumentError, type Command } from 'commander';
import type { KafkaMessage } from 'kafkajs';
import type { Prompt } from '../../../schemas/index.ts';
import { validateMessage } from '../../validation.ts';
import { createKafka, type KafkaConnectionOptions } from '../../transport/kafka/client.ts';
import { connectionOf, positiveInt, withConnection, type ConnectionFlags } from '../options.ts';
import { KafkaPublisher } from '../../transport/kafka/sink.ts';
import {
  createRunTopics,
  deleteRunTopics,
  describeRunTopics,
  EDGES,
  parseTopicName,
  recordKey,
  type RunTopicsOptions,
} from '../../transport/kafka/topics.ts';
import { isWeightsChunk } from '../../transport/kafka/source.ts';

/** Adds `topics create|describe|delete`, `feed` and `tail` to the program. */
export function registerKafkaCommands(program: Command): void {
  const topics = program.command('topics').description("Create, describe or delete a run's Kafka topics");
  const runTopics = (name: string, description: string) =>
    withConnection(topics.command(name).description(description)).requiredOption(
      '--run <name>',
      'run whose topics these are: <run>.prompts, <run>.rollouts, ...',
    );

  runTopics('create', "Create the run's topics that do not exist yet")
    .option('--partitions <n>', 'partitions of each work topic (versions always has 1)', positiveInt, 3)
    .option(
      '--retention-ms <n>',
      "how long records are kept, -1 for ever (default: the broker's)",
      retentionMs,
    )
    .option(
      '--replication-factor <n>',
      "copies of each partition (default: the broker's default.replication.factor)",
      positiveInt,
    )
    .action(async (flags: ConnectionFlags & { run: string } & RunTopicsOptions, command: Command) => {
      const created = await createRunTopics(connectionOf(flags, command), flags.run, flags);
      const out = writer(command);
      for (const topic of created) out(`created ${topic}`);
      if (created.length === 0) out(`all topics of run ${flags.run} exist already`);
    });

  runTopics('describe', "Show the run's topics: partitions, records held, retention").action(
    async (flags: ConnectionFlags & { run: string }, command: Command) => {
      const described = await describeRunTopics(connectionOf(flags, command), flags.run);
      const rows = described.map((t) =>
        t.exists
          ? [t.topic, t.schema, String(t.partitions), String(t.records), formatRetention(t.retentionMs)]
          : [t.topic, t.schema, '-', '-', 'missing'],
      );
      const table = [['topic', 'schema', 'partitions', 'records', 'retention'], ...rows];
      const widths = table[0]!.map((_, column) => Math.max(...table.map((row) => row[column]!.length)));
      const out = writer(command);
      const line = (row: string[]) => row.map((cell, column) => cell.padEnd(widths[column]!)).join('  ');
      for (const row of table) out(line(row).trimEnd());
    },
  );

  runTopics('delete', "Delete the run's topics and every record in them").action(
    async (flags: ConnectionFlags & { run: string }, command: Command) => {
      const deleted = await deleteRunTopics(connectionOf(flags, command), flags.run);
      const out = writer(command);
      for (const topic of deleted) out(`deleted ${topic}`);
      if (deleted.length === 0) out(`run ${flags.run} has no topics`);
    },
  );

  withConnection(
    program
      .command('feed')
      .description('Publish the prompts of a JSONL file (one Prompt per line) to a topic, keyed by prompt id')
      .argument('<topic>', 'topic to publish to, e.g. <run>.prompts')
      .argument(
        '<file>',
        'JSONL file of prompts: {"schemaVersion": 1, "id", "task", "text", "answer"?, "meta"?} per line',
      ),
  ).action(async (topic: string, file: string, flags: ConnectionFlags, command: Command) => {
    const connection = connectionOf(flags, command);
    const edge = parseTopicName(topic);
    if (edge && edge.edge !== 'prompts')
      command.error(
        `feed publishes prompts; ${topic} carries ${EDGES[edge.edge]} messages (feed ${edge.run}.prompts instead)`,
      );
    if (!existsSync(file)) command.error(`No such file: ${file}`);
    await requireTopic(connection, topic, command);
    const publisher = new KafkaPublisher({ connection });
    const lines = createInterface({ input: createReadStream(file), crlfDelay: Infinity });
    let lineNumber = 0;
    let published = 0;
    let rejected = 0;
    let sent: Promise<void>[] = [];
    try {
      for await (const line of lines) {
        lineNumber++;
        if (line.trim() === '') continue;
        const parsed = parsePromptLine(line);
        if (!parsed.ok) {
          rejected++;
          writer(command, 'err')(`${file}:${lineNumber}: ${parsed.reason}`);
          continue;
        }
        sent.push(publisher.publish(topic, 'Prompt', parsed.prompt, recordKey('Prompt', parsed.prompt, '')));
        published++;
        // Reading outruns Kafka: wait for what is sent now and then, so a big file is not held in memory.
        if (sent.length >= 10_000) {
          await Promise.all(sent);
          sent = [];
        }
      }
      await Promise.all(sent);
    } finally {
      await publisher.close();
    }
    writer(command)(
      `published ${published} prompts to ${topic}${rejected > 0 ? `, rejected ${rejected} lines` : ''}`,
    );
    if (rejected > 0) command.error(`${rejected} lines of ${file} are not valid prompts (listed above)`);
  });

  withConnection(
    program
      .command('tail')
      .description('Print the records of a topic as JSON lines, as they arrive')
      .argument('<topic>', 'topic to read, e.g. <run>.metrics'),
  )
    .option('--from-beginning', 'start from the oldest record held, not from new ones')
    .option('--limit <n>', 'stop after this many records', positiveInt)
    .action(
      async (
        topic: string,
        flags: ConnectionFlags & { fromBeginning?: boolean; limit?: number },
        command: Command,
      ) => {
        const connection = connectionOf(flags, command);
        await requireTopic(connection, topic, command);
        const kafka = createKafka(connection);
        // A group of its own that commits nothing: tailing never moves a real consumer group.
        const groupId = `rxrl-tail-${randomUUID()}`;
        const consumer = kafka.consumer({ groupId, allowAutoTopicCreation: false, maxWaitTimeInMs: 500 });
        const out = writer(command);
        let printed = 0;
        let stop!: () => void;
        const stopped = new Promise<void>((resolve) => (stop = resolve));
        process.once('SIGINT', stop);
        try {
          await consumer.connect();
          await consumer.subscribe({ topics: [topic], fromBeginning: flags.fromBeginning ?? false });
          await consumer.run({
            autoCommit: false,
            eachMessage: async ({ partition, message }) => {
              if (flags.limit !== undefined && printed >= flags.limit) return;
              out(formatRecord(topic, partition, message));
              if (++printed === flags.limit) stop();
            },
          });
          await stopped;
        } finally {
          process.off('SIGINT', stop);
          await consumer.disconnect();
          const admin = kafka.admin();
          await admin.connect();
          await admin.deleteGroups([groupId]).catch(() => {});
          await admin.disconnect();
        }
      },
    );
}

async function requireTopic(
  connection: KafkaConnectionOptions,
  topic: string,
  command: Command,
): Promise<void> {
  const admin = createKafka(connection).admin();
  await admin.connect();
  try {
    if (!(await admin.listTopics()).includes(topic)) {
      command.error(
        `Topic ${topic} does not exist: create the run's topics with rxrl topics create --run <run>`,
      );
    }
  } finally {
    await admin.disconnect();
  }
}

/** The prompt on a line, or what is wrong with it. */
function parsePromptLine(line: string): { ok: true; prompt: Prompt } | { ok: false; reason: string } {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch (error) {
    return { ok: false, reason: `not valid JSON: ${(error as Error).message}` };
  }
  const checked = validateMessage('Prompt', json);
  return checked.ok ? { ok: true, prompt: checked.value } : { ok: false, reason: checked.error.message };
}

function formatRecord(topic: string, partition: number, message: KafkaMessage): string {
  if (!isWeightsChunk(message) && message.value) {
    try {
      return JSON.stringify(JSON.parse(message.value.toString('utf8')));
    } catch {
      // Not JSON: described below.
    }
  }
  const headers = Object.fromEntries(
    Object.entries(message.headers ?? {}).map(([name, value]) => [name, value?.toString()]),
  );
  return JSON.stringify({
    topic,
    partition,
    offset: message.offset,
    key: message.key?.toString(),
    headers,
    bytes: message.value?.length ?? 0,
  });
}

function formatRetention(ms: number | undefined): string {
  if (ms === undefined) return 'default';
  if (ms < 0) return 'forever';
  const hours = ms / 3_600_000;
  return hours >= 1 && Number.isInteger(hours) ? `${hours} h` : `${ms} ms`;
}

function writer(command: Command, stream: 'out' | 'err' = 'out'): (line: string) => void {
  const output = command.configureOutput();
  const write = stream === 'out' ? output.writeOut : output.writeErr;
  return (line) => (write ? write(`${line}\n`) : console.log(line));
}

function retentionMs(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < -1)
    throw new InvalidArgumentError('expected milliseconds, or -1 for forever.');
  return n;
}
