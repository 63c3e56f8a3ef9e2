/**
 * Runs a local Kafka broker until SIGINT/SIGTERM: `npx tsx scripts/kafka-broker.ts`.
 * Prints `KAFKA_BROKERS=<host:port>` once it accepts clients, so other shells can point at it.
 */
import { startLocalBroker } from '../src/transport/kafka/broker.ts';

const broker = await startLocalBroker({ log: (message) => console.error(message) }).catch((error: Error) => {
  console.error(error.message);
  process.exit(1);
});
console.log(`KAFKA_BROKERS=${broker.brokers.join(',')}`);
console.error(`Broker logs in ${broker.logDir}; Ctrl-C to stop.`);

let stopping = false;
const shutdown = (signal: NodeJS.Signals) => {
  if (stopping) return;
  stopping = true;
  console.error(`${signal}: stopping the broker...`);
  broker.stop().then(
    () => process.exit(0),
    (error: Error) => {
      console.error(`Stopping the broker failed: ${error.message}`);
      process.exit(1);
    },
  );
};
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
