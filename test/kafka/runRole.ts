/**
 * One role of a run over Kafka in a process of its own, for the run tests: prints each event, then the
 * summary, as JSON lines on stdout; SIGTERM stops it the way the CLI does.
 * Usage: node --import tsx test/kafka/runRole.ts <brokers> <run> <role> <runDir> <cacheDir> <steps> [workerId]
 */
import { parseBrokers } from '../../src/transport/kafka/client.ts';
import { runOverKafka, type KafkaRole } from '../../src/run/kafka/index.ts';
import { tiny } from './runTopology.ts';

const [brokers, run, role, runDir, cacheDir, steps, workerId] = process.argv.slice(2);
if (!brokers || !run || !role || !runDir || !cacheDir || !steps) {
  console.error(
    'Usage: node --import tsx test/kafka/runRole.ts <brokers> <run> <role> <runDir> <cacheDir> <steps> [workerId]',
  );
  process.exit(2);
}

const controller = new AbortController();
process.once('SIGTERM', () => controller.abort());
const print = (line: object) => process.stdout.write(`${JSON.stringify(line)}\n`);

runOverKafka({
  topology: tiny,
  backend: 'wasm',
  role: role as KafkaRole,
  connection: { brokers: parseBrokers(brokers), clientId: `rxrl-test-${role}-${process.pid}` },
  run,
  runDir,
  cacheDir,
  steps: Number(steps),
  signal: controller.signal,
  sessionTimeoutMs: 6_000,
  metricsIntervalMs: 1_000,
  ...(workerId ? { workerId } : {}),
  onEvent: (event) => print({ event }),
}).then(
  (summary) => {
    print({ summary });
    process.exit(0);
  },
  (error: Error) => {
    console.error(error.stack ?? error.message);
    process.exit(1);
  },
);
