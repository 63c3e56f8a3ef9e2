/**
 * Starts a real single-node Apache Kafka broker (KRaft, combined broker + controller) from Maven jars,
 * for tests and local runs on machines without Docker. Needs Java 17+, and Maven once to fetch the jars.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel } from 'kafkajs';

export const DEFAULT_KAFKA_VERSION = '4.1.1';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const KAFKA_SCRIPTS = join(REPO_ROOT, 'scripts', 'kafka');
const HOST = '127.0.0.1';
const USE_EXISTING = 'or set KAFKA_BROKERS to an existing broker';

export interface LocalBrokerOptions {
  /** Kafka version fetched from Maven (default 4.1.1). */
  version?: string;
  /** Jar cache root; jars go to `<cacheDir>/<version>/libs`. Default: env RXRL_KAFKA_CACHE or `<repo>/.cache/kafka`. */
  cacheDir?: string;
  /** Limit for the broker to accept clients (default 90 s). */
  readyTimeoutMs?: number;
  /** Grace period after SIGTERM before SIGKILL in stop() (default 30 s). */
  stopTimeoutMs?: number;
  /** Progress messages (e.g. the one-time jar download); silent by default. */
  log?: (message: string) => void;
}

export interface LocalBroker {
  brokers: string[];
  /** Broker logs: server.log (WARN+) and java's stdout/stderr in java.out. Removed by stop(). */
  logDir: string;
  stop(): Promise<void>;
}

export async function startLocalBroker(options: LocalBrokerOptions = {}): Promise<LocalBroker> {
  const version = options.version ?? DEFAULT_KAFKA_VERSION;
  const readyTimeoutMs = options.readyTimeoutMs ?? 90_000;
  const log = options.log ?? (() => {});
  const java = await findJava();
  const libs = await ensureJars(version, options.cacheDir ?? defaultCacheDir(), log);

  const workDir = await mkdtemp(join(tmpdir(), 'rxrl-kafka-'));
  const logDir = join(workDir, 'logs');
  const dataDir = join(workDir, 'data');
  await mkdir(logDir);
  const [brokerPort, controllerPort] = await freePorts(2);
  const propsFile = join(workDir, 'server.properties');
  await writeFile(propsFile, serverProperties(brokerPort!, controllerPort!, dataDir));

  const jvmCommon = [
    `-Dlog4j2.configurationFile=${join(KAFKA_SCRIPTS, 'log4j2.xml')}`,
    `-Dkafka.logs.dir=${logDir}`,
    '-cp',
    join(libs, '*'),
  ];
  // A short-lived tool: C1-only JIT and the serial GC start it ~25% faster on a small machine.
  const format = await run(java, [
    '-XX:TieredStopAtLevel=1',
    '-XX:+UseSerialGC',
    ...jvmCommon,
    'kafka.tools.StorageTool',
    'format',
    '--standalone',
    '-t',
    clusterId(),
    '-c',
    propsFile,
  ]);
  if (format.code !== 0) {
    await rm(workDir, { recursive: true, force: true });
    throw new Error(`Formatting the Kafka log dir failed (exit ${format.code}):\n${tail(format.output)}`);
  }

  // java writes to a file, not a pipe: a pipe nobody drains would eventually block the broker.
  const outFile = join(logDir, 'java.out');
  const outFd = openSync(outFile, 'a');
  const jvm = ['-Xms256m', '-Xmx512m', '-XX:+UseG1GC', ...jvmCommon];
  const child = spawn(java, [...jvm, 'kafka.Kafka', propsFile], { stdio: ['ignore', outFd, outFd] });
  closeSync(outFd);
  let spawnError: Error | undefined;
  const exited = new Promise<void>((done) => {
    child.once('exit', () => done());
    child.once('error', (error) => {
      spawnError = error;
      done();
    });
  });
  // Last resort if this process exits without calling stop(): never leave an orphan broker behind.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  const brokers = [`${HOST}:${brokerPort}`];
  try {
    // Fail fast if java dies (bad config, port taken, too little memory) instead of waiting out the limit.
    const alive = () => {
      if (spawnError) throw new Error(`Could not start java: ${spawnError.message}`);
      const status = child.exitCode ?? child.signalCode;
      if (status !== null) throw new Error(`Kafka broker exited during startup (${status})`);
    };
    await waitUntilReady(brokers, brokerPort!, Date.now() + readyTimeoutMs, alive);
  } catch (error) {
    await stopProcess(child, exited, 5_000);
    process.off('exit', killOnExit);
    const logs = await logTail(logDir);
    // The work dir is kept so the full logs can be read.
    throw new Error(`${(error as Error).message}; logs in ${logDir}:\n${logs}`, { cause: error });
  }

  let stopping: Promise<void> | undefined;
  return {
    brokers,
    logDir,
    stop: () =>
      (stopping ??= (async () => {
        await stopProcess(child, exited, options.stopTimeoutMs ?? 30_000);
        process.off('exit', killOnExit);
        await rm(workDir, { recursive: true, force: true });
      })()),
  };
}

/** Waits until a broker list answers metadata requests and its group coordinator is loaded. */
export async function waitForBrokers(brokers: string[], timeoutMs = 30_000): Promise<void> {
  await waitForAdmin(brokers, Date.now() + timeoutMs);
}

function defaultCacheDir(): string {
  return process.env.RXRL_KAFKA_CACHE || join(REPO_ROOT, '.cache', 'kafka');
}

async function findJava(): Promise<string> {
  const java = process.env.JAVA_HOME ? join(process.env.JAVA_HOME, 'bin', 'java') : 'java';
  const where = process.env.JAVA_HOME ? `in JAVA_HOME (${java})` : 'on PATH';
  const install = `install a JDK (e.g. apt-get install openjdk-17-jre-headless) ${USE_EXISTING}`;
  const result = await run(java, ['-version']).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') throw new Error(`Java 17+ not found ${where}: ${install}`);
    throw error;
  });
  // `java -version` prints e.g. `openjdk version "17.0.15"` or, for Java 8, `"1.8.0_402"`.
  const match = /version "(\d+)(?:\.(\d+))?/.exec(result.output);
  const major = match ? Number(match[1] === '1' ? match[2] : match[1]) : NaN;
  if (result.code !== 0 || !(major >= 17)) {
    const found = match ? `Java ${match[1] === '1' ? match[2] : match[1]}` : 'no usable Java';
    throw new Error(`Java 17+ not found ${where} (found ${found}): ${install}`);
  }
  return java;
}

/** Returns the jar directory, fetching it with Maven only when the cache lacks it. */
async function ensureJars(
  version: string,
  cacheDir: string,
  log: (message: string) => void,
): Promise<string> {
  const libs = join(cacheDir, version, 'libs');
  const hasBroker = (dir: string) =>
    existsSync(dir) && readdirSync(dir).includes(`kafka_2.13-${version}.jar`);
  if (hasBroker(libs)) return libs;

  // Download beside the cache and rename at the end, so an interrupted or concurrent fetch never leaves
  // a half-filled libs dir that later runs would trust.
  const staging = `${libs}.partial-${process.pid}-${Date.now()}`;
  await mkdir(dirname(libs), { recursive: true });
  log(`Fetching Kafka ${version} jars with Maven into ${libs} (one time)...`);
  const args = ['-q', '-B', '-f', join(KAFKA_SCRIPTS, 'pom.xml'), 'dependency:copy-dependencies'];
  args.push('-DincludeScope=runtime', `-DoutputDirectory=${staging}`, `-Dkafka.version=${version}`);
  const mvn = await run('mvn', args).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') {
      throw new Error(
        `Maven (mvn) not found on PATH: it is needed once to fetch the Kafka ${version} jars into ${libs}; ` +
          `install Maven (e.g. apt-get install maven) ${USE_EXISTING}`,
      );
    }
    throw error;
  });
  if (mvn.code !== 0 || !hasBroker(staging)) {
    await rm(staging, { recursive: true, force: true });
    throw new Error(
      `Maven could not fetch the Kafka ${version} jars (exit ${mvn.code}). It needs Maven Central once; ` +
        `later runs use the jars cached in ${libs}. Fix the error below ${USE_EXISTING}:\n${tail(mvn.output)}`,
    );
  }
  try {
    await rename(staging, libs);
  } catch (error) {
    // Another process won the race: its copy is just as good.
    await rm(staging, { recursive: true, force: true });
    if (!hasBroker(libs)) throw error;
  }
  return libs;
}

function serverProperties(brokerPort: number, controllerPort: number, dataDir: string): string {
  const props: Record<string, string | number> = {
    'process.roles': 'broker,controller',
    'node.id': 1,
    'controller.quorum.bootstrap.servers': `${HOST}:${controllerPort}`,
    listeners: `PLAINTEXT://${HOST}:${brokerPort},CONTROLLER://${HOST}:${controllerPort}`,
    'advertised.listeners': `PLAINTEXT://${HOST}:${brokerPort},CONTROLLER://${HOST}:${controllerPort}`,
    'inter.broker.listener.name': 'PLAINTEXT',
    'controller.listener.names': 'CONTROLLER',
    'listener.security.protocol.map': 'CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
    'log.dirs': dataDir,
    // One broker: internal topics must not ask for 3 replicas, or consumer groups never find a coordinator.
    'offsets.topic.replication.factor': 1,
    'offsets.topic.num.partitions': 1,
    'transaction.state.log.replication.factor': 1,
    'transaction.state.log.min.isr': 1,
    'transaction.state.log.num.partitions': 1,
    'share.coordinator.state.topic.replication.factor': 1,
    'share.coordinator.state.topic.min.isr': 1,
    // Tests join groups one consumer at a time; no point waiting for more members.
    'group.initial.rebalance.delay.ms': 0,
  };
  return Object.entries(props)
    .map(([key, value]) => `${key}=${value}\n`)
    .join('');
}

/** A KRaft cluster id: 16 random bytes in base64url; Kafka rejects ids starting with '-'. */
function clusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url');
    if (!id.startsWith('-')) return id;
  }
}

/** Asks the OS for free ports, holding them all open together so they differ. */
async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<ReturnType<typeof createServer>>((done, fail) => {
          const server = createServer();
          server.once('error', fail);
          server.listen(0, HOST, () => done(server));
        }),
    ),
  );
  const ports = servers.map((server) => (server.address() as AddressInfo).port);
  await Promise.all(servers.map((server) => new Promise((done) => server.close(done))));
  return ports;
}

async function waitUntilReady(
  brokers: string[],
  port: number,
  deadline: number,
  alive: () => void,
): Promise<void> {
  // The broker opens its client port only once it has caught up on metadata and is unfenced.
  while (!(await canConnect(port))) {
    alive();
    if (Date.now() > deadline) throw new Error(`Kafka broker did not open ${HOST}:${port} in time`);
    await sleep(250);
  }
  await waitForAdmin(brokers, deadline, alive);
}

async function waitForAdmin(brokers: string[], deadline: number, alive = () => {}): Promise<void> {
  let lastError: unknown;
  while (Date.now() < deadline) {
    alive();
    const kafka = new Kafka({
      clientId: 'rxrl-broker-check',
      brokers,
      logLevel: logLevel.NOTHING,
      connectionTimeout: 3_000,
      retry: { retries: 2 },
    });
    const admin = kafka.admin();
    try {
      await admin.connect();
      await admin.listTopics();
      // Creates and loads __consumer_offsets now; otherwise the first consumer group of a run
      // crashes once with "coordinator is loading" and kafkajs logs an error while it restarts.
      await admin.describeGroups(['rxrl-broker-check']);
      return;
    } catch (error) {
      lastError = error;
      await sleep(500);
    } finally {
      await admin.disconnect().catch(() => {});
    }
  }
  const reason = lastError instanceof Error ? `: ${lastError.message}` : '';
  throw new Error(`Kafka at ${brokers.join(',')} did not answer admin requests in time${reason}`);
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = createConnection({ host: HOST, port, timeout: 1_000 });
    const finish = (ok: boolean) => {
      socket.destroy();
      done(ok);
    };
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
    socket.once('timeout', () => finish(false));
  });
}

async function stopProcess(child: ChildProcess, exited: Promise<void>, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  // SIGTERM lets Kafka shut down cleanly (it flushes logs and leaves the quorum).
  child.kill('SIGTERM');
  const timeout = new AbortController(); // cancelled on exit, so no idle timer keeps Node alive
  const timer = sleep(timeoutMs, 'timeout' as const, { signal: timeout.signal }).catch(() => undefined);
  const outcome = await Promise.race([exited, timer]);
  timeout.abort();
  if (outcome === 'timeout') {
    child.kill('SIGKILL');
    await exited;
  }
}

/** Runs a command to completion, collecting stdout and stderr together. Rejects only if it cannot start. */
function run(command: string, args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', fail);
    child.once('close', (code) => done({ code, output }));
  });
}

async function logTail(logDir: string): Promise<string> {
  const parts: string[] = [];
  for (const name of ['java.out', 'server.log']) {
    const text = await readFile(join(logDir, name), 'utf8').catch(() => '');
    if (text.trim()) parts.push(`--- ${name} ---\n${tail(text)}`);
  }
  return parts.join('\n') || '(no log output)';
}

// Maven prints colour codes even in batch mode.
// eslint-disable-next-line no-control-regex
const ANSI_COLOUR = /\x1b\[[0-9;]*m/g;

function tail(text: string, lines = 30): string {
  return text.replace(ANSI_COLOUR, '').trimEnd().split('\n').slice(-lines).join('\n');
}
