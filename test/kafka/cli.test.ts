/**
 * The Kafka commands of the CLI against a real broker: topics, feed (with bad lines) and tail; `rxrl run
 * --transport kafka` as a process of its own, and its usage errors.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { afterAll, expect, it } from 'vitest';
import { registerKafkaCommands } from '../../src/cli/commands/kafka.ts';
import { registerRunCommand } from '../../src/cli/commands/run.ts';
import { deleteRunTopics, topicName } from '../../src/transport/kafka/topics.ts';
import { connection, prompt, unique } from './helpers.ts';
import { tiny } from './runTopology.ts';

const dirs: string[] = [];
afterAll(() => Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true }))));

/** Runs `rxrl <args> --brokers <test broker>` in this process and returns what it printed. */
async function rxrl(...args: string[]): Promise<{ out: string[]; err: string[]; error?: CommanderError }> {
  const out: string[] = [];
  const err: string[] = [];
  const program = new Command('rxrl').exitOverride().configureOutput({
    writeOut: (text) => out.push(...text.trimEnd().split('\n')),
    writeErr: (text) => err.push(...text.trimEnd().split('\n')),
  });
  registerKafkaCommands(program);
  registerRunCommand(program);
  try {
    await program.parseAsync([...args, '--brokers', connection.brokers.join(',')], { from: 'user' });
    return { out, err };
  } catch (error) {
    if (error instanceof CommanderError) return { out, err, error };
    throw error;
  }
}

it('creates and describes a run’s topics, feeds a JSONL file with bad lines, tails it and deletes the topics', async () => {
  const run = unique('cli');
  const topic = topicName(run, 'prompts');

  const created = await rxrl(
    'topics',
    'create',
    '--run',
    run,
    '--partitions',
    '2',
    '--retention-ms',
    '3600000',
  );
  expect(created.error).toBeUndefined();
  expect(created.out).toHaveLength(8);
  expect(created.out).toContain(`created ${topic}`);

  const dir = await mkdtemp(join(tmpdir(), 'rxrl-feed-'));
  dirs.push(dir);
  const file = join(dir, 'prompts.jsonl');
  const good = ['a', 'b', 'c'].map((id) => prompt(id));
  await writeFile(
    file,
    [
      JSON.stringify(good[0]),
      JSON.stringify(good[1]),
      '{"schemaVersion": 1, "id": "broken"',
      '',
      JSON.stringify({ ...prompt('d'), id: '' }),
      JSON.stringify(good[2]),
    ].join('\n') + '\n',
  );

  const fed = await rxrl('feed', topic, file);
  expect(fed.error?.exitCode).toBe(1);
  expect(fed.err[0]).toMatch(new RegExp(`^${file}:3: not valid JSON: `));
  expect(fed.err[1]).toMatch(new RegExp(`^${file}:5: Invalid Prompt: id: `));
  expect(fed.out).toEqual([`published 3 prompts to ${topic}, rejected 2 lines`]);

  const tailed = await rxrl('tail', topic, '--from-beginning', '--limit', '3');
  expect(tailed.error).toBeUndefined();
  const printed = tailed.out.map((line) => JSON.parse(line) as { id: string });
  expect(printed.sort((a, b) => a.id.localeCompare(b.id))).toEqual(good);

  const described = await rxrl('topics', 'describe', '--run', run);
  expect(described.out[0]).toMatch(/^topic +schema +partitions +records +retention$/);
  expect(described.out.find((line) => line.startsWith(`${topic} `))).toMatch(/ Prompt +2 +3 +1 h$/);
  expect(described.out.find((line) => line.startsWith(`${topicName(run, 'versions')} `))).toMatch(
    / PolicyVersion +1 +0 +1 h$/,
  );

  const deleted = await rxrl('topics', 'delete', '--run', run);
  expect(deleted.out).toContain(`deleted ${topic}`);
  const gone = await rxrl('topics', 'describe', '--run', run);
  expect(gone.out.find((line) => line.startsWith(`${topic} `))).toMatch(/ missing$/);
});

it('says which topic is missing and how to create it', async () => {
  const missing = await rxrl('tail', `${unique('cli')}.prompts`, '--limit', '1');
  expect(missing.error?.exitCode).toBe(1);
  expect(missing.err.join('\n')).toMatch(
    /does not exist: create the run's topics with rxrl topics create --run/,
  );
});

it('names the run options that do not fit the transport', async () => {
  const usage = async (...args: string[]) => {
    const result = await rxrl('run', 'r1-zero-arithmetic', ...args);
    expect(result.error?.exitCode).toBe(1);
    return result.err.join('\n');
  };
  // rxrl() always passes --brokers, which only means something over Kafka.
  expect(await usage('--role', 'learner')).toMatch(/--role, --brokers only apply with --transport kafka/);
  expect(await usage('--transport', 'kafka')).toMatch(
    /--transport kafka needs --role \(rollout \| reward \| learner \| all\)/,
  );
  expect(await usage('--transport', 'kafka', '--role', 'all', '--resume')).toMatch(
    /--resume does not apply with --transport kafka: a learner resumes from the checkpoint in its --run-dir/,
  );
  expect(await usage('--transport', 'kafka', '--role', 'boss')).toMatch(
    /option '--role <role>' argument 'boss' is invalid. Allowed choices are rollout, reward, learner, all/,
  );
});

it(
  'rxrl run --transport kafka --role all trains over the topics and accounts for every prompt',
  { timeout: 600_000 },
  async () => {
    const run = unique('cli-run');
    const dir = await mkdtemp(join(tmpdir(), 'rxrl-cli-run-'));
    dirs.push(dir);
    const args = ['run', 'test/kafka/runTopology.ts', '--transport', 'kafka', '--role', 'all'];
    args.push('--brokers', connection.brokers.join(','), '--run', run, '--steps', '2', '--backend', 'wasm');
    args.push('--run-dir', join(dir, 'run'), '--cache-dir', join(dir, 'cache'));
    const child = spawn(process.execPath, ['bin/rxrl.js', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    await deleteRunTopics(connection, run).catch(() => {});
    expect(code, `stdout:\n${out.slice(-2_000)}\nstderr:\n${err.slice(-2_000)}`).toBe(0);

    expect(out).toContain(`created topics: ${topicName(run, 'prompts')}`);
    expect(out).toMatch(/learner: 2 steps \(wasm\)/);
    const counts = /prompts: (\d+) published = (\d+) trained \+ (\d+) dropped \+ (\d+) pending/.exec(out);
    expect(counts, out).not.toBeNull();
    const [published, trained, dropped, pending] = counts!.slice(1).map(Number) as [
      number,
      number,
      number,
      number,
    ];
    expect(pending).toBe(0);
    expect(trained).toBeGreaterThan(0);
    // Each step trains one batch of promptsPerStep groups of groupSize samples.
    const batch = tiny.grpo.promptsPerStep * tiny.grpo.groupSize;
    expect(out).toMatch(new RegExp(`samples: ${2 * batch} trained, \\d+ dropped`));
    expect(published).toBe(trained + dropped + pending);
    expect(out).toMatch(/rollout worker .*-rollout: \d+ rollouts of \d+ prompts, last version [12] \(wasm\)/);
    expect(out).toMatch(/reward worker .*-reward: \d+ rollouts scored/);
  },
);
