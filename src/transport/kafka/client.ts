/**
 * How rxrl connects to Kafka: one place for the client id, security settings and the retry policy that every
 * admin, producer and consumer of the transport shares.
 */
import type { ConnectionOptions } from 'node:tls';
import { Kafka, logLevel, type LogEntry, type logCreator, type RetryOptions } from 'kafkajs';

/** SASL mechanisms the Kafka broker offers without extra client plugins. */
export const SASL_MECHANISMS = ['plain', 'scram-sha-256', 'scram-sha-512'] as const;
export type SaslMechanism = (typeof SASL_MECHANISMS)[number];

/** SASL over the connection (with `ssl`, unless the network is trusted: PLAIN sends the password as is). */
export type KafkaSasl = {
  [M in SaslMechanism]: { mechanism: M; username: string; password: string };
}[SaslMechanism];

export interface KafkaConnectionOptions {
  /** `host:port` of one or more brokers of the cluster. */
  brokers: string[];
  /** Shows up in broker logs and quotas (default "rxrl"). */
  clientId?: string;
  /** TLS: `true` for the system CAs, or Node's TLS options (ca, cert, key, servername...). */
  ssl?: boolean | ConnectionOptions;
  sasl?: KafkaSasl;
  /** Limit for opening a TCP connection to a broker (default 3 s). */
  connectionTimeoutMs?: number;
  /** Retry policy of every request; default {@link DEFAULT_RETRY}. */
  retry?: RetryOptions;
  /** kafkajs log level (default WARN: rebalances and retries are logged, routine joins are not). */
  logLevel?: logLevel;
}

/**
 * Retried with exponential backoff from 300 ms up to 30 s between tries, 8 tries: a broker restart or a
 * leader election (seconds) is ridden out, an unreachable cluster fails within about two minutes.
 */
export const DEFAULT_RETRY: RetryOptions = { initialRetryTime: 300, maxRetryTime: 30_000, retries: 8 };

export function createKafka(options: KafkaConnectionOptions): Kafka {
  if (options.brokers.length === 0) {
    throw new Error('No Kafka brokers given: pass --brokers host:port or set KAFKA_BROKERS');
  }
  for (const broker of options.brokers) {
    const problem = brokerProblem(broker);
    if (problem) throw new Error(problem);
  }
  return new Kafka({
    logCreator: lineLog,
    clientId: options.clientId ?? 'rxrl',
    brokers: options.brokers,
    ...(options.ssl !== undefined ? { ssl: options.ssl } : {}),
    ...(options.sasl ? { sasl: options.sasl } : {}),
    connectionTimeout: options.connectionTimeoutMs ?? 3_000,
    retry: options.retry ?? DEFAULT_RETRY,
    logLevel: options.logLevel ?? logLevel.WARN,
  });
}

/**
 * What is wrong with a broker address, if anything: it must be host:port. An IPv6 literal is refused:
 * kafkajs (2.2) splits an address at its first ':' and cannot reach one; give the host a name.
 */
export function brokerProblem(broker: string): string | undefined {
  if (broker.startsWith('[') || /^[0-9a-fA-F]*:[0-9a-fA-F:.]*:[0-9a-fA-F:.]*$/.test(broker))
    return `Kafka broker '${broker}': kafkajs cannot connect to an IPv6 address; use a host name that resolves to it`;
  const match = /^([^\s:/]+):(\d+)$/.exec(broker);
  const port = match ? Number(match[2]) : NaN;
  if (match && port >= 1 && port <= 65535) return undefined;
  return `Kafka broker '${broker}' is not host:port with a port from 1 to 65535 (e.g. localhost:9092)`;
}

/**
 * kafkajs's log entries as one line each on stderr: level, its component, the message, the error and
 * the broker, then retry counts where there are ones (its default logger prints JSON with stack traces).
 */
export const lineLog: logCreator =
  () =>
  ({ namespace, level, log }: LogEntry): void => {
    console.error(formatLogEntry(namespace, level, log));
  };

/** kafkajs's levels by number (its runtime logLevel object has no reverse mapping). */
const LEVEL_NAMES: Record<number, string> = { 1: 'ERROR', 2: 'WARN', 4: 'INFO', 5: 'DEBUG' };

/** Whether a stack passes through code other than Node's own and kafkajs's. */
function ownFrames(stack: string): boolean {
  return stack
    .split('\n')
    .filter((line) => line.trimStart().startsWith('at '))
    .some((line) => !line.includes('node:') && !/[\\/]kafkajs[\\/]/.test(line));
}

/** One log entry of kafkajs as the line lineLog prints. */
export function formatLogEntry(namespace: string, level: logLevel, log: LogEntry['log']): string {
  const { message, error, broker, groupId, topic, partition, retryCount, retryTime, stack } = log as Record<
    string,
    unknown
  >;
  const parts = [
    `kafka ${LEVEL_NAMES[level] ?? level}${namespace ? ` [${namespace}]` : ''}: ${String(message)}`,
  ];
  if (error !== undefined && error !== message) parts.push(`: ${String(error)}`);
  const where = Object.entries({ broker, group: groupId, topic, partition })
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k} ${String(v)}`);
  if (where.length > 0) parts.push(` (${where.join(', ')})`);
  if (retryCount !== undefined)
    parts.push(
      `, retry ${String(retryCount)}${typeof retryTime === 'number' ? ` in ${(retryTime / 1000).toFixed(1)} s` : ''}`,
    );
  // kafkajs's own errors and network errors say enough in their message; an error thrown by rxrl's
  // code inside a consumer (a frame outside Node and kafkajs) keeps its stack.
  if (level === logLevel.ERROR && typeof stack === 'string' && ownFrames(stack)) parts.push(`\n${stack}`);
  return parts.join('');
}

/** `host:port,host:port` (as in KAFKA_BROKERS or --brokers) to a broker list. */
export function parseBrokers(list: string | undefined): string[] {
  return (list ?? '')
    .split(',')
    .map((broker) => broker.trim())
    .filter(Boolean);
}
