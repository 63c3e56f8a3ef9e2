/** Usage errors of `rxrl run` and `rxrl eval`, as the command line prints them: each names the option and what to do, before anything runs. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CommanderError } from 'commander';
import { expect, it } from 'vitest';
import { createProgram } from '../../src/cli/program.ts';

/** Parses `rxrl <command> <args>` in this process; returns the usage error it stopped with. */
async function usageOf(command: string, ...args: string[]): Promise<string> {
  const err: string[] = [];
  const program = createProgram({
    exitOverride: true,
    output: { writeOut: () => undefined, writeErr: (text) => err.push(text.trim()) },
  });
  try {
    await program.parseAsync([command, ...args], { from: 'user' });
  } catch (error) {
    if (error instanceof CommanderError) return err.join('\n');
    throw error;
  }
  throw new Error(`rxrl ${command} ${args.join(' ')} ran`);
}

const usageError = (...args: string[]): Promise<string> => usageOf('run', ...args);

it('refuses a backend it does not know and lists the ones there are', async () => {
  expect(await usageError('r1-zero-arithmetic', '--backend', 'tensorflow2')).toBe(
    "error: option '--backend <backend>' argument 'tensorflow2' is invalid. Allowed choices are auto, tensorflow-gpu, tensorflow, wasm, cpu.",
  );
});

it("refuses a single run's options for a recipe instead of ignoring them", async () => {
  expect(await usageError('r1-arithmetic', '--steps', '5', '--eta', '0')).toBe(
    'error: --steps, --eta apply to a single run; r1-arithmetic is a recipe, whose stages set their own steps and staleness (see `rxrl describe r1-arithmetic`)',
  );
  expect(await usageError('r1-arithmetic', '--dashboard', '--metrics-host', '0.0.0.0')).toBe(
    "error: --dashboard, --metrics-host apply to a single run; a recipe serves no live metrics: watch a stage's with rxrl dashboard runs/r1-arithmetic/<stage>/metrics.jsonl",
  );
});

it('refuses a --metrics-linger that is not a finite number of seconds setTimeout can wait', async () => {
  expect(await usageError('r1-zero-arithmetic', '--metrics-linger', 'Infinity')).toBe(
    "error: option '--metrics-linger <seconds>' argument 'Infinity' is invalid. expected a finite number >= 0.",
  );
  expect(await usageError('r1-zero-arithmetic', '--metrics-port', '0', '--metrics-linger', '3000000')).toBe(
    'error: --metrics-linger: at most 2147483 seconds (24.8 days)',
  );
});

it('refuses --metrics-linger without a metrics server to keep up', async () => {
  expect(await usageError('r1-zero-arithmetic', '--metrics-linger', '30')).toBe(
    'error: --metrics-linger keeps the metrics server up: give --dashboard or --metrics-port too',
  );
});

it('refuses more learner threads than cores', async () => {
  const n = availableParallelism() + 1;
  expect(await usageError('r1-zero-arithmetic', '--learner-threads', String(n))).toBe(
    `error: --learner-threads ${n}: this machine has ${availableParallelism()} cores (more threads than cores only contend)`,
  );
});

it('names Kafka-only options given without --transport kafka, in the singular or the plural', async () => {
  expect(await usageError('r1-zero-arithmetic', '--role', 'learner')).toBe(
    'error: --role only applies with --transport kafka',
  );
  expect(await usageError('r1-zero-arithmetic', '--role', 'learner', '--worker-id', 'w')).toBe(
    'error: --role, --worker-id only apply with --transport kafka',
  );
  // The connection's options too, and --client-id (which has a default) only when given.
  expect(await usageError('r1-zero-arithmetic', '--ssl', '--retries', '3', '--client-id', 'c')).toBe(
    'error: --ssl, --retries, --client-id only apply with --transport kafka',
  );
});

it('refuses a broker address that is not host:port before connecting', async () => {
  expect(
    await usageError(
      'r1-zero-arithmetic',
      '--transport',
      'kafka',
      '--role',
      'learner',
      '--brokers',
      'localhost',
    ),
  ).toBe(
    "error: --brokers: Kafka broker 'localhost' is not host:port with a port from 1 to 65535 (e.g. localhost:9092)",
  );
});

it('rxrl eval checks both checkpoint directories before evaluating either', async () => {
  const missing = join(tmpdir(), 'rxrl-no-such-checkpoint');
  expect(await usageOf('eval', 'r1-zero-arithmetic', '--checkpoint', tmpdir())).toBe(
    `error: --checkpoint ${tmpdir()}: not a checkpoint directory (no manifest.json in it)`,
  );
  // Checked by its manifest only, before anything loads: the first evaluation may take minutes.
  const present = mkdtempSync(join(tmpdir(), 'rxrl-checkpoint-'));
  writeFileSync(join(present, 'manifest.json'), '{}');
  expect(await usageOf('eval', 'r1-zero-arithmetic', '--checkpoint', present, '--against', missing)).toBe(
    `error: --against ${missing}: no such directory`,
  );
  rmSync(present, { recursive: true });
  expect(await usageOf('eval', 'r1-zero-arithmetic', '--backend', 'gpu')).toBe(
    "error: option '--backend <backend>' argument 'gpu' is invalid. Allowed choices are auto, tensorflow-gpu, tensorflow, wasm, cpu.",
  );
});

it('rxrl eval scores language consistency in English or Chinese, and names the choices', async () => {
  expect(await usageOf('eval', 'r1-zero-arithmetic', '--language', 'fr')).toBe(
    "error: option '--language <language>' argument 'fr' is invalid. Allowed choices are en, zh.",
  );
});

it('rxrl eval takes temperature 0 (greedy) and refuses a negative one', async () => {
  const missing = join(tmpdir(), 'rxrl-no-such-checkpoint');
  // 0 parses: the command goes on to the next check.
  expect(await usageOf('eval', 'r1-zero-arithmetic', '--temperature', '0', '--checkpoint', missing)).toBe(
    `error: --checkpoint ${missing}: no such directory`,
  );
  expect(await usageOf('eval', 'r1-zero-arithmetic', '--temperature', '-1')).toBe(
    "error: option '--temperature <t>' argument '-1' is invalid. expected a finite number >= 0.",
  );
});

it('rxrl eval without --checkpoint says the run has left none yet, and how to make or name one', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rxrl-eval-'));
  const name = `no-run-${Date.now()}`;
  const file = join(dir, 'topology.mts');
  const base = fileURLToPath(new URL('../../pipelines/r1-zero-arithmetic.ts', import.meta.url));
  writeFileSync(
    file,
    `import base from ${JSON.stringify(base)};\nexport default { ...base, name: '${name}' };\n`,
  );
  expect(await usageOf('eval', file)).toBe(
    `error: no checkpoint at ${join('runs', name, 'checkpoint')} yet: run the pipeline (rxrl run ${file}) or pass --checkpoint <dir>`,
  );
  rmSync(dir, { recursive: true });
});

it('rxrl feed refuses a run topic that does not carry prompts, naming the one that does', async () => {
  expect(await usageOf('feed', 'my-run.rollouts', 'prompts.jsonl', '--brokers', '127.0.0.1:1')).toBe(
    'error: feed publishes prompts; my-run.rollouts carries Rollout messages (feed my-run.prompts instead)',
  );
});

it('rxrl feed names a missing file before it connects to a broker', async () => {
  const missing = join(tmpdir(), 'rxrl-no-such-prompts.jsonl');
  // Port 1 answers nothing: were the file checked after connecting, this would retry for minutes.
  expect(await usageOf('feed', 'x.prompts', missing, '--brokers', '127.0.0.1:1')).toBe(
    `error: No such file: ${missing}`,
  );
});

it('--retries <n> makes n + 1 attempts to reach a broker before giving up', { timeout: 60_000 }, async () => {
  // A "broker" that hangs up on every connection, counting them.
  let connections = 0;
  const server = createServer((socket) => {
    connections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const broker = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    for (const [retries, attempts] of [
      [0, 1],
      [2, 3],
    ] as const) {
      connections = 0;
      await expect(
        usageOf('tail', 'x.prompts', '--brokers', broker, '--retries', String(retries)),
      ).rejects.toThrow(/Connection|closed/i);
      expect(connections, `--retries ${retries}`).toBe(attempts);
    }
  } finally {
    server.close();
  }
});
