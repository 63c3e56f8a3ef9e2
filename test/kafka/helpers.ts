/** Shared by the Kafka transport tests: the broker connection, runs with fresh topics, messages, waiting. */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Kafka, logLevel, type KafkaMessage } from 'kafkajs';
import { inject } from 'vitest';
import { SCHEMA_VERSION, type Prompt, type Rollout } from '../../schemas/index.ts';
import type { KafkaConnectionOptions } from '../../src/transport/kafka/client.ts';
import { createRunTopics, deleteRunTopics } from '../../src/transport/kafka/topics.ts';

export const connection: KafkaConnectionOptions = { brokers: inject('kafkaBrokers'), clientId: 'rxrl-test' };

export const unique = (prefix: string) =>
  `rxrl-test-${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;

const runs: string[] = [];

/** A run with all its topics created; deleted by {@link deleteRuns} (only matters on a shared cluster). */
export async function createRun(prefix: string, partitions = 3): Promise<string> {
  const run = unique(prefix);
  runs.push(run);
  await createRunTopics(connection, run, { partitions });
  return run;
}

export async function deleteRuns(): Promise<void> {
  await Promise.all(runs.splice(0).map((run) => deleteRunTopics(connection, run).catch(() => {})));
}

export function prompt(id: string): Prompt {
  return { schemaVersion: SCHEMA_VERSION, id, task: 'arithmetic', text: `What is ${id}?`, answer: '4' };
}

export function rollout(groupId: string, index: number, groupSize = 4, tokens = 8): Rollout {
  return {
    schemaVersion: SCHEMA_VERSION,
    id: `${groupId}/${index}`,
    groupId,
    index,
    groupSize,
    prompt: prompt(groupId),
    promptTokenIds: Array.from({ length: tokens }, (_, i) => i + 1),
    completionTokenIds: Array.from({ length: tokens }, (_, i) => i + 100),
    completion: 'four',
    behaviourLogProbs: Array.from({ length: tokens }, (_, i) => -0.1 * (i + 1)),
    policyVersion: 0,
    finishReason: 'eos',
  };
}

/** `count` rollouts in groups of `groupSize`, interleaved as concurrent generation emits them. */
export function rollouts(count: number, groupSize = 4): Rollout[] {
  const groups = Math.ceil(count / groupSize);
  return Array.from({ length: count }, (_, i) =>
    rollout(`g${i % groups}`, Math.floor(i / groups), groupSize),
  );
}

/** Reads `count` raw records of a topic from the beginning with a throwaway consumer group. */
export async function readTopic(topic: string, count: number, timeoutMs = 20_000): Promise<KafkaMessage[]> {
  const kafka = new Kafka({ ...connection, logLevel: logLevel.WARN });
  const consumer = kafka.consumer({ groupId: unique('reader'), maxWaitTimeInMs: 100 });
  const received: KafkaMessage[] = [];
  try {
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run({ eachMessage: async ({ message }) => void received.push(message) });
    await waitFor(() => received.length >= count, `${count} records on ${topic}`, timeoutMs);
    return received;
  } finally {
    await consumer.disconnect();
  }
}

/** Polls `condition`; `what` names it in the timeout error (a function: read when the time is up, with the state then). */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  what: string | (() => string),
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline)
      throw new Error(
        `Timed out after ${timeoutMs} ms waiting for ${typeof what === 'string' ? what : what()}`,
      );
    await sleep(25);
  }
}

/** Whether a child process still runs, or how it ended: a silent child may have been killed. */
export function state(child: ChildProcess): string {
  if (child.exitCode !== null) return `pid ${child.pid}, exited with code ${child.exitCode}`;
  if (child.signalCode !== null) return `pid ${child.pid}, killed by ${child.signalCode}`;
  return `pid ${child.pid}, running`;
}
