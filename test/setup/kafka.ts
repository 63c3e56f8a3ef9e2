/**
 * Global setup of the `kafka` test project: uses the brokers in KAFKA_BROKERS when set, otherwise starts a
 * real local broker (see src/transport/kafka/broker.ts). Tests read the list with `inject('kafkaBrokers')`.
 */
import type { TestProject } from 'vitest/node';
import { startLocalBroker, waitForBrokers } from '../../src/transport/kafka/broker.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string[];
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const configured = (process.env.KAFKA_BROKERS ?? '')
    .split(',')
    .map((broker) => broker.trim())
    .filter(Boolean);
  if (configured.length > 0) {
    try {
      await waitForBrokers(configured, 30_000);
    } catch (error) {
      throw new Error(
        `KAFKA_BROKERS=${configured.join(',')} is set but not usable (${(error as Error).message}); ` +
          'fix it, or unset it to start a local broker',
        { cause: error },
      );
    }
    project.provide('kafkaBrokers', configured);
    return async () => {};
  }

  const startedAt = Date.now();
  const broker = await startLocalBroker({ log: (message) => console.log(`[kafka] ${message}`) });
  const seconds = ((Date.now() - startedAt) / 1000).toFixed(1);
  console.log(`[kafka] local broker ${broker.brokers.join(',')} ready in ${seconds} s`);
  project.provide('kafkaBrokers', broker.brokers);
  return () => broker.stop();
}
