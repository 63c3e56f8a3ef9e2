import { logLevel } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { brokerProblem, createKafka, formatLogEntry } from '../../src/transport/kafka/client.ts';

describe('broker addresses', () => {
  it('takes host:port, names what is wrong otherwise, and refuses IPv6 literals kafkajs cannot reach', () => {
    for (const ok of ['localhost:9092', '10.0.0.7:19092', 'kafka-0.kafka.svc:9093', 'my_broker:9092'])
      expect(brokerProblem(ok), ok).toBeUndefined();
    for (const bad of [
      'localhost',
      'localhost:',
      ':9092',
      'host:0',
      'host:65536',
      'host:port',
      'a b:1',
      'kafka://h:1',
    ])
      expect(brokerProblem(bad), bad).toBe(
        `Kafka broker '${bad}' is not host:port with a port from 1 to 65535 (e.g. localhost:9092)`,
      );
    expect(() => createKafka({ brokers: ['localhost:9092', 'localhost'] })).toThrow(
      /Kafka broker 'localhost' is not/,
    );
  });
});

describe("kafkajs's log, one line an entry", () => {
  it('gives the level, component, message, error, broker and retry, without the stack', () => {
    const log = {
      timestamp: '2026-01-01T00:00:00.000Z',
      logger: 'kafkajs',
      message: 'Failed to connect to seed broker',
      error: 'Connection error: connect ECONNREFUSED 127.0.0.1:1',
      broker: '127.0.0.1:1',
      retryCount: 2,
      retryTime: 812,
      stack:
        'KafkaJSConnectionError: Connection error\n    at Socket.onError (/app/node_modules/kafkajs/src/network/connection.js:210:23)\n    at Socket.emit (node:events:517:28)',
    };
    expect(formatLogEntry('BrokerPool', logLevel.ERROR, log)).toBe(
      'kafka ERROR [BrokerPool]: Failed to connect to seed broker: Connection error: connect ECONNREFUSED 127.0.0.1:1 (broker 127.0.0.1:1), retry 2 in 0.8 s',
    );
    expect(formatLogEntry('', logLevel.WARN, { timestamp: '', message: 'rebalancing' })).toBe(
      'kafka WARN: rebalancing',
    );
    // A network error's stack is Node's own: left out too.
    const refused = {
      timestamp: '',
      message: 'Connection error: connect ECONNREFUSED 127.0.0.1:1',
      broker: '127.0.0.1:1',
      stack:
        'Error: connect ECONNREFUSED 127.0.0.1:1\n    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1611:16)',
    };
    expect(formatLogEntry('Connection', logLevel.ERROR, refused)).toBe(
      'kafka ERROR [Connection]: Connection error: connect ECONNREFUSED 127.0.0.1:1 (broker 127.0.0.1:1)',
    );
  });
});
