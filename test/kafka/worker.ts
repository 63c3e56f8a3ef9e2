/**
 * A consumer process for the rebalance test: reads `<run>.prompts` in a consumer group, "processes" each
 * prompt slowly, prints its id on stdout (the durable effect) and then acks it.
 * Usage: node --import tsx test/kafka/worker.ts <brokers> <run> <groupId> <msPerRecord>
 */
import { concatMap, delay, of } from 'rxjs';
import { parseBrokers } from '../../src/transport/kafka/client.ts';
import { kafkaSource } from '../../src/transport/kafka/source.ts';

const [brokers, run, groupId, msPerRecord] = process.argv.slice(2);
if (!brokers || !run || !groupId || !msPerRecord) {
  console.error('Usage: node --import tsx test/kafka/worker.ts <brokers> <run> <groupId> <msPerRecord>');
  process.exit(2);
}

const source = kafkaSource({
  connection: { brokers: parseBrokers(brokers), clientId: `rxrl-test-worker-${process.pid}` },
  run,
  edge: 'prompts',
  groupId,
  maxInFlight: 5,
  // The broker's minimum: a killed worker's partitions move to the others after 6 s.
  sessionTimeoutMs: 6_000,
});
const subscription = source
  .pipe(concatMap((delivery) => of(delivery).pipe(delay(Number(msPerRecord)))))
  .subscribe({
    next: (delivery) => process.stdout.write(`${delivery.value.id}\n`, () => delivery.ack()),
    error: (error: Error) => {
      console.error(error.message);
      process.exit(1);
    },
  });

process.once('SIGTERM', () => {
  subscription.unsubscribe();
  source.closed().then(
    () => process.exit(0),
    (error: Error) => {
      console.error(error.message);
      process.exit(1);
    },
  );
});
