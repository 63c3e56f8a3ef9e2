import type { ScoredRollout } from '../../../schemas/index.ts';
import type { Metrics } from '../../metrics/metrics.ts';
import type { BackendRequest } from '../../policy/backend.ts';
import type { KafkaConnectionOptions } from '../../transport/kafka/client.ts';
import type { Topology } from '../../topology/topology.ts';
import type { RunEvent } from '../r1zero.ts';

export const KAFKA_ROLES = ['rollout', 'reward', 'learner', 'all'] as const;
export type KafkaRole = (typeof KAFKA_ROLES)[number];

export interface KafkaRunOptions {
  topology: Topology;
  backend: BackendRequest;
  /** Which part of the run this process plays; `all` plays every part, still talking over the topics. */
  role: KafkaRole;
  connection: KafkaConnectionOptions;
  /** The learner's directory: checkpoint (resumed from when present), state.json, learner.jsonl, metrics.jsonl. */
  runDir: string;
  /** Where base models are cached between runs. */
  cacheDir: string;
  /**
   * Threads for the learner's kernels on the wasm backend: its worker and learnerThreads - 1 helpers
   * (default 1). Results do not depend on it.
   */
  learnerThreads?: number;
  /** Names the run's topics `<run>.<edge>` and consumer groups (default: the topology's name). */
  run?: string;
  /** Overrides topology.run.steps; workers stop once the learner publishes this version. */
  steps?: number;
  /** Overrides topology.grpo.eta. */
  eta?: number;
  metrics?: Metrics;
  onEvent?: (event: KafkaRunEvent) => void;
  /** The learner calls this with each scored sample it takes in (a dashboard's completions panel). */
  onCompletion?: (sample: ScoredRollout) => void;
  /** Stops the role: a worker leaves its group, the learner checkpoints and leaves. */
  signal?: AbortSignal;
  /** Names this worker in metrics labels and events (default: host name and process id). */
  workerId?: string;
  /** Partitions of the work topics when the learner creates them (default 3: at most 3 workers share a stage). */
  partitions?: number;
  /** Copies of each partition of the topics the learner creates (default: the broker's default). */
  replicationFactor?: number;
  /** A worker silent this long leaves its consumer group and its partitions move (default 10 s; Kafka's minimum is 6 s). */
  sessionTimeoutMs?: number;
  /** Rollout workers: prompts per sampling call (default the topology's promptsPerStep). */
  promptsPerCall?: number;
  /** Workers publish their counters and gauges on `<run>.metrics` this often (default 5 s). */
  metricsIntervalMs?: number;
  /** Workers wait this long for the run's topics to exist (default 5 minutes). */
  topicsTimeoutMs?: number;
}

type Role = 'rollout' | 'reward' | 'learner';

export type KafkaRunEvent =
  | Extract<RunEvent, { kind: 'pretrain' | 'base-model' | 'step' | 'checkpoint' }>
  | { kind: 'backend'; role: 'rollout' | 'learner'; backend: string }
  | { kind: 'topics'; run: string; created: string[] }
  | { kind: 'warning'; message: string }
  | { kind: 'waiting'; role: Role; what: string }
  | { kind: 'resume'; version: number; promptCursor: number; pending: number; adopted: number }
  | { kind: 'version-published'; version: number; bytes: number }
  | { kind: 'policy'; worker: string; version: number }
  | { kind: 'rollouts'; worker: string; prompts: number; rollouts: number; version: number; seconds: number }
  | { kind: 'stopped'; role: Role; reason: 'finished' | 'signal' };

/** Prompts (groups) by outcome; `published` = `trained` + the dropped ones + `pending`. */
export interface PromptAccounting {
  published: number;
  trained: number;
  dropped: Record<string, number>;
  pending: number;
}

/** Samples by outcome, counted when their group was decided (so restarts do not count them twice). */
export interface SampleAccounting {
  trained: number;
  dropped: Record<string, number>;
  /** Samples of groups already decided (re-deliveries and re-reads after a restart): skipped, not lost. */
  duplicates: number;
}

export interface LearnerSummary {
  steps: number;
  /** The version this incarnation resumed from, when it did. */
  resumedFrom?: number;
  prompts: PromptAccounting;
  samples: SampleAccounting;
  backend: string;
}

export interface RolloutSummary {
  worker: string;
  prompts: number;
  rollouts: number;
  /** The policy version it ran last. */
  version: number;
  backend: string;
}

export interface RewardSummary {
  worker: string;
  scored: number;
}

export interface KafkaRunSummary {
  run: string;
  role: KafkaRole;
  seconds: number;
  learner?: LearnerSummary;
  rollout?: RolloutSummary;
  reward?: RewardSummary;
}

/** What a role gets from runOverKafka. */
export interface RoleContext {
  options: KafkaRunOptions;
  run: string;
  totalSteps: number;
  eta: number;
  workerId: string;
  metrics: Metrics;
  emit: (event: KafkaRunEvent) => void;
  signal: AbortSignal;
  sessionTimeoutMs: number;
  /** The learner calls this once its first version is published and it starts consuming. */
  ready?: () => void;
}
