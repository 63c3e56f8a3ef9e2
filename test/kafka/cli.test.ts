/** The Kafka commands of the CLI against a real broker: topics, feed (with bad lines) and tail. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { afterAll, expect, it } from 'vitest';
import { registerKafkaCommands } from '../../src/cli/commands/kafka.ts';
import { topicName } from '../../src/transport/kafka/topics.ts';
import { connection, prompt, unique } from './helpers.ts';

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
