/**
 * How rxrl connects to Kafka: one place for the client id, security settings and the retry policy that every
 * admin, producer and consumer of the transport shares.
 */
import type { ConnectionOptions } from 'node:tls';
import { Kafka, logLevel, type RetryOptions } from 'kafkajs';

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
  return new Kafka({
    clientId: options.clientId ?? 'rxrl',
    brokers: options.brokers,
    ...(options.ssl !== undefined ? { ssl: options.ssl } : {}),
    ...(options.sasl ? { sasl: options.sasl } : {}),
    connectionTimeout: options.connectionTimeoutMs ?? 3_000,
    retry: options.retry ?? DEFAULT_RETRY,
    logLevel: options.logLevel ?? logLevel.WARN,
  });
}

/** `host:port,host:port` (as in KAFKA_BROKERS or --brokers) to a broker list. */
export function parseBrokers(list: string | undefined): string[] {
  return (list ?? '')
    .split(',')
    .map((broker) => broker.trim())
    .filter(Boolean);
}
