/**
 * Option parsers and the Kafka connection options shared by the CLI's commands. A parser throws
 * commander's InvalidArgumentError, so the message names the option and the value at fault.
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import {
  brokerProblem,
  DEFAULT_RETRY,
  parseBrokers,
  SASL_MECHANISMS,
  type KafkaConnectionOptions,
  type SaslMechanism,
} from '../transport/kafka/client.ts';

function integer(value: string, min: number, expected: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < min)
    throw new InvalidArgumentError(`expected ${expected}.`);
  return n;
}

export const positiveInt = (value: string): number => integer(value, 1, 'a positive integer');
export const nonNegativeInt = (value: string): number => integer(value, 0, 'an integer >= 0');
export const anyInt = (value: string): number => integer(value, Number.MIN_SAFE_INTEGER, 'an integer');

export function portNumber(value: string): number {
  const n = integer(value, 0, 'a port, 0 to 65535');
  if (n > 65535) throw new InvalidArgumentError('expected a port, 0 to 65535.');
  return n;
}

export function nonNegativeNumber(value: string): number {
  const n = Number(value);
  if (!(n >= 0) || !Number.isFinite(n) || value.trim() === '')
    throw new InvalidArgumentError('expected a finite number >= 0.');
  return n;
}

export function probability(value: string): number {
  const n = Number(value);
  if (!(n > 0 && n <= 1)) throw new InvalidArgumentError('expected a number in (0, 1].');
  return n;
}

/** For repeatable options: each use adds one value. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

export interface ConnectionFlags {
  brokers?: string;
  clientId?: string;
  ssl?: boolean;
  saslMechanism?: SaslMechanism;
  retries?: number;
}

/** Adds the Kafka connection options (--brokers, --client-id, --ssl, --sasl-mechanism, --retries) to a command. */
export function withConnection(command: Command): Command {
  return command
    .option('--brokers <list>', 'Kafka brokers, host:port[,host:port...] (default: env KAFKA_BROKERS)')
    .option('--client-id <id>', 'client id the brokers see', 'rxrl')
    .option('--ssl', 'connect with TLS (system CAs)')
    .option(
      '--retries <n>',
      'times a failed Kafka request is retried, backing off from 0.3 s to 30 s (default 8: an unreachable cluster fails after about 2 minutes)',
      nonNegativeInt,
    )
    .addOption(
      new Option(
        '--sasl-mechanism <mechanism>',
        'authenticate with SASL; user and password from env KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD',
      ).choices(SASL_MECHANISMS),
    );
}

/** The kafkajs connection the options of `withConnection` describe; what is missing is a usage error. */
export function connectionOf(flags: ConnectionFlags, command: Command): KafkaConnectionOptions {
  const brokers = parseBrokers(flags.brokers ?? process.env.KAFKA_BROKERS);
  if (brokers.length === 0) command.error('No Kafka brokers: pass --brokers host:port or set KAFKA_BROKERS');
  for (const broker of brokers) {
    const problem = brokerProblem(broker);
    if (problem) command.error(`${flags.brokers === undefined ? 'KAFKA_BROKERS' : '--brokers'}: ${problem}`);
  }
  const connection: KafkaConnectionOptions = { brokers, clientId: flags.clientId ?? 'rxrl' };
  if (flags.ssl) connection.ssl = true;
  if (flags.retries !== undefined) connection.retry = { ...DEFAULT_RETRY, retries: flags.retries };
  if (flags.saslMechanism) {
    const username = process.env.KAFKA_SASL_USERNAME;
    const password = process.env.KAFKA_SASL_PASSWORD;
    if (!username || !password) {
      command.error(
        `--sasl-mechanism ${flags.saslMechanism} needs env KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD`,
      );
    }
    connection.sasl = { mechanism: flags.saslMechanism, username, password };
  }
  return connection;
}
