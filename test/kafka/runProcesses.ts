/** Roles of a run over Kafka in processes of their own (test/kafka/runRole.ts), and what they print. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { KafkaRunEvent, KafkaRunSummary } from '../../src/run/kafka/index.ts';
import type { LearnerState } from '../../src/run/kafka/learner.ts';
import { readTopicSince } from '../../src/run/kafka/common.ts';
import { decodeMessage } from '../../src/transport/kafka/source.ts';
import { topicName } from '../../src/transport/kafka/topics.ts';
import { decodeVersionsRecord } from '../../src/transport/kafka/weights.ts';
import { connection, state } from './helpers.ts';

const ENTRY = join(dirname(fileURLToPath(import.meta.url)), 'runRole.ts');

export interface RoleProcess {
  name: string;
  process: ChildProcess;
  events: KafkaRunEvent[];
  summary?: KafkaRunSummary;
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const started: RoleProcess[] = [];

export function startRole(
  name: string,
  args: { run: string; role: string; runDir: string; cacheDir: string; steps: number; workerId?: string },
): RoleProcess {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      ENTRY,
      connection.brokers.join(','),
      args.run,
      args.role,
      args.runDir,
      args.cacheDir,
      String(args.steps),
      ...(args.workerId ? [args.workerId] : []),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const role: RoleProcess = { name, process: child, events: [], stderr: [], exited };
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      let parsed: { event?: KafkaRunEvent; summary?: KafkaRunSummary };
      try {
        parsed = JSON.parse(line) as typeof parsed;
      } catch {
        // Something else wrote to stdout: kept for the failure message, not thrown in the test's process.
        role.stderr.push(`(stdout) ${line}\n`);
        continue;
      }
      if (parsed.event) role.events.push(parsed.event);
      if (parsed.summary) role.summary = parsed.summary;
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => role.stderr.push(chunk.toString()));
  started.push(role);
  return role;
}

/** The end of a process's stderr, for failure messages. */
export function logs(...roles: RoleProcess[]): string {
  return roles
    .map((r) => {
      const events = r.events.slice(-5).map((e) => JSON.stringify(e).slice(0, 200));
      return `--- ${r.name} (${state(r.process)}): last events\n${events.join('\n')}\nstderr:\n${r.stderr.join('').slice(-1_500)}`;
    })
    .join('\n');
}

export async function killAll(): Promise<void> {
  for (const role of started.splice(0)) {
    if (role.process.exitCode === null && role.process.signalCode === null) role.process.kill('SIGKILL');
    await role.exited;
  }
}

/** Resolves with the exit of a process that must end by itself within `timeoutMs`. */
export async function finished(role: RoleProcess, timeoutMs: number, ...others: RoleProcess[]) {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(new Error(`${role.name} did not finish in ${timeoutMs / 1000} s\n${logs(role, ...others)}`)),
      timeoutMs,
    );
  });
  try {
    const exit = await Promise.race([role.exited, timeout]);
    if (exit.code !== 0) throw new Error(`${role.name} exited with ${JSON.stringify(exit)}\n${logs(role)}`);
    return exit;
  } finally {
    clearTimeout(timer);
  }
}

export function learnerState(runDir: string): LearnerState {
  return JSON.parse(readFileSync(join(runDir, 'state.json'), 'utf8')) as LearnerState;
}

export function learnerLog(runDir: string): Record<string, unknown>[] {
  return readFileSync(join(runDir, 'learner.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** Every prompt id on the run's prompts topic, in the order read (per partition). */
export async function promptIds(run: string): Promise<string[]> {
  const records = await readTopicSince(connection, topicName(run, 'prompts'), {});
  return records.flatMap((record) => {
    const decoded = decodeMessage('Prompt', record.value);
    return decoded.kind === 'message' ? [decoded.value.id] : [];
  });
}

/** The PolicyVersion numbers on the run's versions topic, in order. */
export async function publishedVersions(run: string): Promise<number[]> {
  const records = await readTopicSince(connection, topicName(run, 'versions'), {});
  return records.flatMap((record) => {
    const decoded = decodeVersionsRecord(record);
    return decoded.kind === 'message' && decoded.value.kind === 'policy'
      ? [decoded.value.policy.version]
      : [];
  });
}

/** Checks that every prompt on the topic was decided exactly once, and the counts add up. */
export function promptOutcomes(state: LearnerState, ids: string[]) {
  const outcomes = new Map(state.resolved);
  const undecided = ids.filter((id) => !outcomes.has(id));
  const dropped = Object.values(state.prompts.dropped).reduce((a, b) => a + b, 0);
  return { undecided, distinct: new Set(ids).size, dropped };
}
