/**
 * The topics of a run: one per edge of the flow, named `<run>.<edge>`, each carrying one message
 * schema; how records are keyed on them; and admin helpers to create, describe and delete them.
 */
import kafkajs, { type Admin } from 'kafkajs';
import type { z } from 'zod';
import type { messageSchemas, MessageName } from '../../../schemas/index.ts';
import { createKafka, type KafkaConnectionOptions } from './client.ts';

/** Each edge and the schema of its records. */
export const EDGES = {
  prompts: 'Prompt',
  rollouts: 'Rollout',
  scored: 'ScoredRollout',
  advantaged: 'AdvantagedSample',
  batches: 'GradientBatch',
  versions: 'PolicyVersion',
  metrics: 'Metric',
  dlq: 'DeadLetter',
} as const satisfies Record<string, MessageName>;
export type Edge = keyof typeof EDGES;
export const EDGE_NAMES = Object.keys(EDGES) as Edge[];

export type MessageOf<N extends MessageName> = z.infer<(typeof messageSchemas)[N]>;

/**
 * Header that marks records which are not JSON messages of the topic's schema: weight chunks on the versions
 * topic (weights.ts). A message source skips them; every other record must be a valid message.
 */
export const RECORD_KIND_HEADER = 'rxrl-kind';
export const WEIGHTS_CHUNK_KIND = 'weights-chunk';

// Kafka's rule for topic names, less the 249-character limit which the edge suffix must fit in too.
const LEGAL_RUN = /^[a-zA-Z0-9._-]+$/;

export function topicName(run: string, edge: Edge): string {
  if (!LEGAL_RUN.test(run) || run.length + edge.length + 1 > 249) {
    throw new Error(
      `Run name "${run}" cannot name Kafka topics: use letters, digits, '.', '_' and '-' (at most ${248 - edge.length} characters)`,
    );
  }
  return `${run}.${edge}`;
}

/** The topic of one edge of a run and the schema its records are validated with. */
export function edgeTopic<E extends Edge>(
  run: string,
  edge: E,
): { topic: string; schema: (typeof EDGES)[E] } {
  return { topic: topicName(run, edge), schema: EDGES[edge] };
}

/** The run and edge a topic name stands for, or undefined for a topic that is not a run's edge. */
export function parseTopicName(topic: string): { run: string; edge: Edge } | undefined {
  const dot = topic.lastIndexOf('.');
  const edge = topic.slice(dot + 1);
  if (dot <= 0 || !(edge in EDGES)) return undefined;
  return { run: topic.slice(0, dot), edge: edge as Edge };
}

// Ordering holds within a partition only: the samples of a group share its id as key, so the group lands on
// one partition and one consumer assembles it. Versions and metrics are keyed by run: one total order.
const RECORD_KEYS: { [N in MessageName]: (message: MessageOf<N>, run: string) => string } = {
  Prompt: (m) => m.id,
  Rollout: (m) => m.groupId,
  ScoredRollout: (m) => m.groupId,
  Group: (m) => m.groupId,
  AdvantagedSample: (m) => m.groupId,
  GradientBatch: (m) => m.id,
  PolicyVersion: (_m, run) => run,
  Metric: (m) => m.run,
  DeadLetter: (m) => m.key ?? m.source,
};

/** The Kafka record key of a message: its group id, or the run for run-wide streams. */
export function recordKey<N extends MessageName>(schema: N, message: MessageOf<N>, run: string): string {
  return (RECORD_KEYS[schema] as (message: MessageOf<N>, run: string) => string)(message, run);
}

export interface RunTopicsOptions {
  /** Partitions of the work edges: the most consumers of a group that can share one (default 3). */
  partitions?: number;
  /** How long records are kept (Kafka's retention.ms); the broker's default (7 days) if unset. */
  retentionMs?: number;
  /**
   * Copies of each partition (default: the broker's default.replication.factor, which is 1 on a single
   * broker and what a managed cluster requires); 3 on a production cluster of your own.
   */
  replicationFactor?: number;
}

/**
 * max.message.bytes of a run's dead-letter topic: a dead letter wraps a record of up to ~1 MB, possibly as
 * base64 (a third larger), plus the envelope.
 */
export const DLQ_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface TopicDescription {
  edge: Edge;
  topic: string;
  schema: MessageName;
  exists: boolean;
  partitions: number;
  /** Records currently held (high minus low watermark over the partitions). */
  records: number;
  retentionMs?: number;
}

/**
 * Creates the topics of a run that do not exist yet and returns the names it created. The versions topic
 * has one partition whatever `partitions` says: versions form one sequence, keyed by run anyway.
 */
export async function createRunTopics(
  connection: KafkaConnectionOptions,
  run: string,
  options: RunTopicsOptions = {},
): Promise<string[]> {
  const partitions = options.partitions ?? 3;
  if (!Number.isInteger(partitions) || partitions < 1) {
    throw new Error(`partitions must be a positive integer, got ${partitions}`);
  }
  const topics = EDGE_NAMES.map((edge) => {
    const configEntries = [];
    if (options.retentionMs !== undefined) {
      configEntries.push({ name: 'retention.ms', value: String(options.retentionMs) });
    }
    if (edge === 'dlq')
      configEntries.push({ name: 'max.message.bytes', value: String(DLQ_MAX_MESSAGE_BYTES) });
    return {
      topic: topicName(run, edge),
      numPartitions: edge === 'versions' ? 1 : partitions,
      // Unset: kafkajs asks for -1, the broker's default.replication.factor.
      ...(options.replicationFactor !== undefined ? { replicationFactor: options.replicationFactor } : {}),
      configEntries,
    };
  });
  return withAdmin(connection, async (admin) => {
    const existing = new Set(await admin.listTopics());
    const missing = topics.filter((topic) => !existing.has(topic.topic));
    if (missing.length > 0) await admin.createTopics({ topics: missing, waitForLeaders: true });
    return missing.map((topic) => topic.topic);
  });
}

/**
 * The versions topic's retention for weights of `versionBytes` bytes each: segments of about one version
 * and retention.bytes of four, so the topic keeps the last few versions (all a rollout worker that starts
 * reads) instead of every version for retention.ms: a ~10M model publishes 43 MB a step.
 */
export function versionsRetention(versionBytes: number): { name: string; value: string }[] {
  // Kafka 4 takes segments of 1 MiB at least; the margin covers chunk headers and the PolicyVersion.
  const segment = Math.max(1024 * 1024, Math.ceil(versionBytes * 1.05) + 64 * 1024);
  return [
    { name: 'segment.bytes', value: String(segment) },
    { name: 'retention.bytes', value: String(4 * segment) },
  ];
}

/**
 * Sets versionsRetention on a run's versions topic, keeping the topic's own other settings (alterConfigs
 * replaces every setting it does not name, so they are read first and sent along). A retention.bytes the
 * topic already has is the operator's choice and stays: then nothing changes and this returns false.
 */
export async function limitVersionsTopic(admin: Admin, run: string, versionBytes: number): Promise<boolean> {
  const name = topicName(run, 'versions');
  const { resources } = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: kafkajs.ConfigResourceTypes.TOPIC, name }],
  });
  // The topic's own settings: not defaults, not the broker's (configSource 1: DYNAMIC_TOPIC_CONFIG).
  const own = (resources[0]?.configEntries ?? []).filter(
    (e) => !e.isDefault && !e.readOnly && e.configValue !== null && e.configSource === 1,
  );
  if (own.some((e) => e.configName === 'retention.bytes')) return false;
  const limits = versionsRetention(versionBytes);
  const kept = own
    .filter((e) => !limits.some((l) => l.name === e.configName))
    .map((e) => ({ name: e.configName, value: e.configValue }));
  await admin.alterConfigs({
    validateOnly: false,
    resources: [{ type: kafkajs.ConfigResourceTypes.TOPIC, name, configEntries: [...kept, ...limits] }],
  });
  return true;
}

/** Every edge topic of a run: whether it exists, its partitions, record count and retention. */
export async function describeRunTopics(
  connection: KafkaConnectionOptions,
  run: string,
): Promise<TopicDescription[]> {
  return withAdmin(connection, async (admin) => {
    const existing = new Set(await admin.listTopics());
    const names = EDGE_NAMES.map((edge) => topicName(run, edge)).filter((topic) => existing.has(topic));
    const retention = new Map<string, number>();
    if (names.length > 0) {
      const { resources } = await admin.describeConfigs({
        includeSynonyms: false,
        resources: names.map((name) => ({
          type: kafkajs.ConfigResourceTypes.TOPIC,
          name,
          configNames: ['retention.ms'],
        })),
      });
      for (const resource of resources) {
        const value = resource.configEntries.find(
          (entry) => entry.configName === 'retention.ms',
        )?.configValue;
        if (value !== undefined) retention.set(resource.resourceName, Number(value));
      }
    }
    return Promise.all(
      EDGE_NAMES.map(async (edge): Promise<TopicDescription> => {
        const topic = topicName(run, edge);
        const base = { edge, topic, schema: EDGES[edge] };
        if (!existing.has(topic)) return { ...base, exists: false, partitions: 0, records: 0 };
        const offsets = await admin.fetchTopicOffsets(topic);
        const records = offsets.reduce((sum, p) => sum + Number(p.high) - Number(p.low), 0);
        const retentionMs = retention.get(topic);
        return {
          ...base,
          exists: true,
          partitions: offsets.length,
          records,
          ...(retentionMs !== undefined ? { retentionMs } : {}),
        };
      }),
    );
  });
}

/** Deletes the edge topics of a run that exist and returns their names. */
export async function deleteRunTopics(connection: KafkaConnectionOptions, run: string): Promise<string[]> {
  return withAdmin(connection, async (admin) => {
    const existing = new Set(await admin.listTopics());
    const topics = EDGE_NAMES.map((edge) => topicName(run, edge)).filter((topic) => existing.has(topic));
    if (topics.length > 0) await admin.deleteTopics({ topics });
    return topics;
  });
}

async function withAdmin<T>(
  connection: KafkaConnectionOptions,
  use: (admin: Admin) => Promise<T>,
): Promise<T> {
  const admin = createKafka(connection).admin();
  await admin.connect();
  try {
    return await use(admin);
  } finally {
    await admin.disconnect();
  }
}
