import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { codeReward, extractProgram, type RewardInput } from '../../src/rewards/rewards.ts';
import {
  outputsMatch,
  Sandbox,
  sandboxFailure,
  SandboxUnavailableError,
  type Protection,
  type TestCase,
} from '../../src/rewards/sandbox.ts';
import { prompt } from '../fixtures.ts';

/*
 * Hostile programs run for real. Each containment test runs only where the sandbox reports its
 * protection as enforced; elsewhere it prints why, and checks that the sandbox says so and that a
 * sandbox requiring that protection refuses to run (no silent skip).
 */

const SUM = `const nums = require('fs').readFileSync(0, 'utf8').split(/\\s+/).filter(Boolean).map(Number);
console.log(nums.reduce((a, b) => a + b, 0));`;
const SUM_TESTS: TestCase[] = [
  { input: '1 2 3\n', output: '6' },
  { input: '5\n', output: '5' },
  { input: '-4 10\n', output: '6' },
  { input: '7 7 7 7\n', output: '28' },
];
const completion = (program: string) =>
  `<think>add them</think> <answer>\n\`\`\`js\n${program}\n\`\`\`\n</answer>`;
const input = (text: string, tests: TestCase[] = SUM_TESTS): RewardInput => ({
  prompt: { ...prompt('code-1'), task: 'code', answer: { tests } },
  completion: text,
  completionTokens: text.length,
  finishReason: 'eos',
});
const never = new AbortController().signal;

let sandbox: Sandbox;
let scratchHost: string;

beforeAll(async () => {
  sandbox = await Sandbox.create({ require: [], timeoutMs: 5_000, concurrency: 2 });
  console.log(`sandbox protections on this machine:\n${sandbox.describe()}`);
  scratchHost = await mkdtemp(join(tmpdir(), 'rxrl-sandbox-test-'));
  await chmod(scratchHost, 0o777); // world-writable: only the sandbox may keep programs out
});
afterAll(async () => {
  await rm(scratchHost, { recursive: true, force: true });
});

/** Runs `check` where the protection is enforced; elsewhere says why and checks the refusal. */
function contained(protection: Protection, name: string, check: () => Promise<void>) {
  it(`${name} [${protection}]`, async () => {
    const status = sandbox.protections.find((p) => p.protection === protection)!;
    if (!status.enforced) {
      console.warn(`NOT CHECKED: "${name}": ${protection} cannot be enforced here: ${status.detail}`);
      expect(status.detail.length).toBeGreaterThan(0);
      await expect(Sandbox.create({ require: [protection] })).rejects.toThrow(SandboxUnavailableError);
      return;
    }
    await check();
  }, 120_000);
}

function listen(server: Server, target: string | number): Promise<void> {
  return new Promise((done) => {
    if (typeof target === 'string') server.listen(target, done);
    else server.listen(target, '127.0.0.1', done);
  });
}

describe('sandbox: scoring', () => {
  it('compares stdout line by line, trimmed', () => {
    expect(outputsMatch('6\n', '6')).toBe(true);
    expect(outputsMatch('  1 2 \r\n3\n\n', '1 2\n 3')).toBe(true);
    expect(outputsMatch('1\n2', '1 2')).toBe(false);
    expect(outputsMatch('', '0')).toBe(false);
  });

  it('extracts the program from the answer, or the fenced block inside it', () => {
    expect(extractProgram('<think>x</think><answer>console.log(1)</answer>')).toBe('console.log(1)');
    expect(extractProgram('<answer>Here:\n```javascript\nconsole.log(2)\n```\ndone</answer>')).toBe(
      'console.log(2)',
    );
    expect(extractProgram('<answer>a</answer> <answer>```js\nlast()\n```</answer>')).toBe('last()');
    expect(extractProgram('```js\nconsole.log(1)\n```')).toBeNull();
    expect(extractProgram('<answer>  </answer>')).toBeNull();
  });

  it('scores a correct program 1, a partly right one the fraction passed, a wrong one 0', async () => {
    const reward = codeReward({ sandbox });
    expect(await reward.score(input(completion(SUM)), never)).toBe(1);
    // The largest number instead of the sum: right only for the single number.
    const max = SUM.replace('nums.reduce((a, b) => a + b, 0)', 'Math.max(...nums)');
    expect(await reward.score(input(completion(max)), never)).toBe(0.25);
    expect(await reward.score(input(completion('console.log(42)')), never)).toBe(0);
    expect(await reward.score(input(completion('this is not javascript')), never)).toBe(0);
  }, 120_000);

  it('scores 0 without running anything when there is no program', async () => {
    const reward = codeReward({ sandbox });
    expect(await reward.score(input('<think>hmm</think> no answer tags'), never)).toBe(0);
    expect(await reward.score(input('<answer></answer>'), never)).toBe(0);
    expect(sandbox.running).toBe(0);
  });

  it('reports each test: passed, failed, crashed with an excerpt of stderr', async () => {
    const program = `const s = require('fs').readFileSync(0, 'utf8').trim();
if (s === 'boom') throw new Error('exploded on purpose');
console.log(s === 'ok' ? 'ok' : 'nope');`;
    const results = await sandbox.run(program, [
      { input: 'ok', output: 'ok' },
      { input: 'other', output: 'other' },
      { input: 'boom', output: 'boom' },
    ]);
    expect(results.map((r) => r.status)).toEqual(['passed', 'failed', 'crashed']);
    expect(results[1]!.stdout).toBe('nope\n');
    expect(results[2]!.exitCode).toBe(1);
    expect(results[2]!.stderr).toContain('exploded on purpose');
  });

  it('rejects a prompt without test cases (a recorded reward failure, not a 0)', async () => {
    const reward = codeReward({ sandbox });
    const bad = { ...input(completion(SUM)), prompt: { ...prompt('p'), answer: '6' } };
    await expect(reward.score(bad, never)).rejects.toThrow(/no test cases/);
  });

  it('kills the program when the AbortSignal fires', async () => {
    const reward = codeReward({ sandbox });
    const controller = new AbortController();
    const scoring = reward.score(input(completion('setInterval(() => {}, 1000);')), controller.signal);
    while (sandbox.running === 0) await new Promise((r) => setTimeout(r, 20));
    controller.abort(new Error('reward stage timeout'));
    await expect(scoring).rejects.toThrow('reward stage timeout');
    expect(sandbox.running).toBe(0); // the program is gone, not left to run out its time limit
  });
});

describe('sandbox: hostile programs are contained and scored', () => {
  it('an infinite loop times out (wall clock, the process group killed)', async () => {
    const quick = await Sandbox.create({ require: [], timeoutMs: 1_500, onWarning: () => {} });
    const [result] = await quick.run('for (;;) {}', [{ input: '', output: '1' }]);
    expect(result!.status).toBe('timed_out');
    const oneTest = input(completion('while (true);'), [{ input: '', output: '1' }]);
    expect(await codeReward({ sandbox: quick }).score(oneTest, never)).toBe(0);
  });

  contained('cpu', 'a busy loop is stopped by the CPU-time limit before the wall clock', async () => {
    const cpu = await Sandbox.create({ require: [], timeoutMs: 30_000, cpuSeconds: 1, onWarning: () => {} });
    const [result] = await cpu.run('for (;;) {}', [{ input: '', output: '1' }]);
    expect(result!.status).toBe('timed_out');
    expect(result!.signal).toBe('SIGXCPU'); // the CPU limit's signal, not the wall clock's kill
  });

  contained('processes', 'child_process, fork bombs and workers are blocked', async () => {
    const marker = join(scratchHost, 'spawned');
    const escape = (code: string) =>
      `const cp = require('child_process');\n${code}\nconsole.log('escaped');`.replace(
        'CHILD',
        JSON.stringify(`require('fs').writeFileSync(${JSON.stringify(marker)}, 'x')`),
      );
    const programs = [
      escape(`cp.execFileSync(process.execPath, ['-e', CHILD]);`),
      escape(`for (let i = 0; i < 1000; i++) cp.spawn(process.execPath, ['-e', CHILD]);`), // fork bomb
      escape(`cp.execSync('sh -c "echo x > ${marker}"');`),
      `new (require('worker_threads').Worker)(${JSON.stringify(`require('fs').writeFileSync(${JSON.stringify(marker)}, 'x')`)}, { eval: true });\nconsole.log('escaped');`,
      `process.binding('spawn_sync');\nconsole.log('escaped');`,
    ];
    const results = await Promise.all(
      programs.map(async (program) => (await sandbox.run(program, [{ input: '', output: 'escaped' }]))[0]!),
    );
    results.forEach((result, i) => {
      expect(result.status, programs[i]).toBe('crashed');
      expect(result.stderr).toContain('ERR_ACCESS_DENIED');
    });
    const forkBomb = input(completion(programs[1]!), [{ input: '', output: 'escaped' }]);
    expect(await codeReward({ sandbox }).score(forkBomb, never)).toBe(0);
    await new Promise((r) => setTimeout(r, 200));
    expect(existsSync(marker)).toBe(false);
  });

  it('huge output stops at the output limit', async () => {
    const [result] = await sandbox.run(`for (;;) console.log('y'.repeat(1000));`, [
      { input: '', output: 'y' },
    ]);
    expect(result!.status).toBe('output_limit');
    expect(result!.stdout.length).toBeLessThanOrEqual(sandbox.limits.outputBytes);
    const [onStderr] = await sandbox.run(`for (;;) console.error('z'.repeat(1000));`, [
      { input: '', output: '' },
    ]);
    expect(onStderr!.status).toBe('output_limit');
  });

  contained('filesystem', 'files outside the scratch directory cannot be read', async () => {
    const reader = `const fs = require('fs');
const file = fs.readFileSync(0, 'utf8').trim();
let text;
try { text = fs.readFileSync(file, 'utf8'); } catch (e) { text = 'denied: ' + e.code; }
console.log(text);`;
    const packageJson = resolve(import.meta.dirname, '../../package.json');
    const secrets = [packageJson, '/etc/hostname', '/etc/passwd'].filter((f) => existsSync(f));
    const tests = secrets.map((file) => ({ input: file, output: readFileSync(file, 'utf8') }));
    const results = await sandbox.run(reader, tests);
    results.forEach((result, i) => {
      const content = tests[i]!.output.trim();
      expect(result.status, secrets[i]).toBe('failed');
      expect(result.stdout).toMatch(/^denied: /);
      if (content.length > 0) expect(result.stdout).not.toContain(content);
    });
    expect(results[0]!.stdout).not.toContain('"name": "rxrl"');
    // A symbolic link or a hard link in the scratch directory does not lead out either.
    const linker = `const fs = require('fs');
try { fs.symlinkSync(${JSON.stringify(packageJson)}, 'link'); console.log(fs.readFileSync('link', 'utf8')); }
catch (e) { try { fs.linkSync(${JSON.stringify(packageJson)}, 'hard'); console.log(fs.readFileSync('hard', 'utf8')); } catch (e2) { console.log('denied'); } }`;
    const [linked] = await sandbox.run(linker, [{ input: '', output: readFileSync(packageJson, 'utf8') }]);
    expect(linked!.status).not.toBe('passed');
    expect(linked!.stdout).not.toContain('"name": "rxrl"');
  });

  contained('filesystem', 'files outside the scratch directory cannot be written', async () => {
    const target = join(scratchHost, 'written-by-sandbox.txt');
    const writer = `const fs = require('fs');
const file = fs.readFileSync(0, 'utf8').trim();
fs.writeFileSync(file, 'escaped');
fs.writeFileSync('inside.txt', 'fine');
console.log(fs.readFileSync('inside.txt', 'utf8'));`;
    const [result] = await sandbox.run(writer, [{ input: target, output: 'fine' }]);
    expect(result!.status).toBe('crashed');
    expect(existsSync(target)).toBe(false);
    // Writing inside its own scratch directory works.
    const [inside] = await sandbox.run(writer.replace('fs.writeFileSync(file, ', '(() => 0)(file, '), [
      { input: target, output: 'fine' },
    ]);
    expect(inside!.status).toBe('passed');
  });

  contained('fileSize', 'a file larger than the file-size limit cannot be written', async () => {
    const big = `require('fs').writeFileSync('big', Buffer.alloc(${sandbox.limits.fileBytes * 2}, 1)); console.log('written');`;
    const [result] = await sandbox.run(big, [{ input: '', output: 'written' }]);
    expect(result!.status).not.toBe('passed');
    expect(result!.stderr).toMatch(/EFBIG|ENOSPC|File size limit/);
  });

  contained('memory', 'allocating huge memory crashes the program, not the machine', async () => {
    const hog = `const keep = [];
for (let i = 0; i < 64; i++) keep.push(Buffer.alloc(64 * 1024 * 1024, 1));
console.log('allocated');`;
    const [result] = await sandbox.run(hog, [{ input: '', output: 'allocated' }]);
    expect(result!.status).toBe('crashed'); // not timed_out: the limit stopped it
    expect(result!.stdout).toBe('');
  });

  contained('network', 'a connection to a server on 127.0.0.1 never arrives', async () => {
    let connections = 0;
    const server = createServer((c) => {
      connections++;
      c.end('hello from outside\n');
    });
    await listen(server, 0);
    try {
      const port = (server.address() as { port: number }).port;
      const client = `const net = require('net');
const s = net.connect(${port}, '127.0.0.1');
s.on('data', (d) => { process.stdout.write(d); s.destroy(); });
s.on('error', (e) => { console.log('error ' + e.code); });`;
      const [result] = await sandbox.run(client, [{ input: '', output: 'hello from outside' }]);
      expect(result!.status).not.toBe('passed');
      expect(result!.stdout).not.toContain('hello from outside');
      await new Promise((r) => setTimeout(r, 200));
      expect(connections).toBe(0);
    } finally {
      server.close();
    }
  });

  contained('localSockets', 'a Unix socket outside the sandbox cannot be reached', async () => {
    let connections = 0;
    const server = createServer((c) => {
      connections++;
      c.end('hello from a socket\n');
    });
    const socket = join(scratchHost, 'outside.sock');
    await listen(server, socket);
    await chmod(socket, 0o777);
    try {
      const client = `const s = require('net').connect(${JSON.stringify(socket)});
s.on('data', (d) => { process.stdout.write(d); s.destroy(); });
s.on('error', (e) => { console.log('error ' + e.code); });`;
      const [result] = await sandbox.run(client, [{ input: '', output: 'hello from a socket' }]);
      expect(result!.status).not.toBe('passed');
      await new Promise((r) => setTimeout(r, 200));
      expect(connections).toBe(0);
    } finally {
      server.close();
    }
  });

  contained('signals', 'another process cannot be signalled', async () => {
    const victim: ChildProcess = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], {
      stdio: 'ignore',
    });
    try {
      const killer = `const pid = Number(require('fs').readFileSync(0, 'utf8'));
try { process.kill(pid, 'SIGKILL'); console.log('killed'); } catch (e) { console.log('error ' + e.code); }`;
      const [result] = await sandbox.run(killer, [{ input: String(victim.pid), output: 'killed' }]);
      expect(result!.status).toBe('failed');
      expect(result!.stdout.trim()).toBe('error ESRCH');
      await new Promise((r) => setTimeout(r, 200));
      expect(victim.exitCode).toBeNull();
      expect(victim.signalCode).toBeNull();
    } finally {
      victim.kill('SIGKILL');
    }
  });

  contained('privileges', 'a program started by root does not run as root', async () => {
    const [result] = await sandbox.run('console.log(process.getuid())', [{ input: '', output: '' }]);
    if (process.getuid?.() === 0) expect(result!.stdout.trim()).toBe('65534');
    else expect(sandbox.protections.find((p) => p.protection === 'privileges')!.detail).toBe('not root');
  });

  it('leaves no scratch directory behind', async () => {
    // Its stage directories go under os.tmpdir(), which follows TMPDIR: one of this test's own.
    const own = await mkdtemp(join(tmpdir(), 'rxrl-sandbox-test-tmp-'));
    const before = process.env.TMPDIR;
    process.env.TMPDIR = own;
    try {
      const [result] = await sandbox.run(`require('fs').writeFileSync('mark.txt', 'x'); console.log('ok')`, [
        { input: '', output: 'ok' },
      ]);
      expect(result!.status).toBe('passed');
      expect(readdirSync(own)).toEqual([]);
    } finally {
      if (before === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = before;
      await rm(own, { recursive: true, force: true });
    }
  });
});

describe('sandbox: what it enforces is reported, and missing protections refused', () => {
  it('reports every protection with how it is enforced or why it is not', () => {
    expect(sandbox.protections.map((p) => p.protection).sort()).toEqual(
      [
        'cpu',
        'fileSize',
        'filesystem',
        'localSockets',
        'memory',
        'network',
        'privileges',
        'processes',
        'signals',
      ].sort(),
    );
    for (const p of sandbox.protections) expect(p.detail.length).toBeGreaterThan(5);
  });

  it('refuses when a required protection is unavailable, and warns when it is not required', async () => {
    // Without namespaces there is no network, Unix-socket or signal isolation.
    const refused = Sandbox.create({ without: ['namespaces'] });
    await expect(refused).rejects.toThrow(SandboxUnavailableError);
    await expect(refused).rejects.toThrow(/network: turned off/);
    const warnings: string[] = [];
    const weaker = await Sandbox.create({
      without: ['namespaces'],
      require: ['filesystem', 'processes'],
      onWarning: (m) => warnings.push(m),
    });
    expect(weaker.enforces('network')).toBe(false);
    expect(weaker.enforces('signals')).toBe(false);
    expect(warnings.join('\n')).toMatch(/WITHOUT network, localSockets, signals/);
    // A reward over a refusing sandbox fails (null, counted) instead of scoring.
    const reward = codeReward({ without: ['namespaces'] });
    await expect(reward.score(input(completion(SUM)), never)).rejects.toThrow(SandboxUnavailableError);
  });

  it('where namespaces are refused, the probe falls back to a weaker plan instead of failing', async () => {
    // An `unshare` that refuses, first on the PATH (as in a container without user namespaces).
    const bin = await mkdtemp(join(tmpdir(), 'rxrl-sandbox-bin-'));
    const fake = join(bin, 'unshare');
    writeFileSync(fake, '#!/bin/sh\necho "unshare: unshare failed: Operation not permitted" >&2\nexit 1\n');
    await chmod(fake, 0o755);
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path ?? ''}`;
    try {
      const warnings: string[] = [];
      // (Another memory limit: a probe of its own, not the one cached for the real unshare.)
      const weaker = await Sandbox.create({ require: [], memoryMb: 255, onWarning: (m) => warnings.push(m) });
      expect(weaker.enforces('network')).toBe(false);
      expect(weaker.enforces('filesystem')).toBe(true);
      const results = await weaker.run(SUM, SUM_TESTS, never);
      expect(results.every((r) => r.status === 'passed')).toBe(true);
    } finally {
      process.env.PATH = path;
      await rm(bin, { recursive: true, force: true });
    }
  }, 120_000);

  it('a plan whose first probe fails for a passing reason is tried again before a weaker one is taken', async () => {
    const real = ['/usr/bin/unshare', '/bin/unshare', '/usr/sbin/unshare'].find((f) => existsSync(f));
    if (!real || !sandbox.enforces('network')) {
      console.warn('NOT CHECKED: no namespaces here to fall back from');
      expect(sandbox.enforces('network')).toBe(false);
      return;
    }
    // An `unshare` that fails once (a machine too loaded, EAGAIN), then works.
    const bin = await mkdtemp(join(tmpdir(), 'rxrl-sandbox-bin-'));
    const marker = join(bin, 'failed-once');
    writeFileSync(
      join(bin, 'unshare'),
      `#!/bin/sh\nif [ ! -e '${marker}' ]; then : > '${marker}'; echo 'unshare: Resource temporarily unavailable' >&2; exit 1; fi\nexec '${real}' "$@"\n`,
    );
    await chmod(join(bin, 'unshare'), 0o755);
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path ?? ''}`;
    try {
      const retried = await Sandbox.create({ require: [], memoryMb: 253, onWarning: () => undefined });
      expect(existsSync(marker)).toBe(true); // it did fail once
      expect(retried.protections.map((p) => [p.protection, p.enforced])).toEqual(
        sandbox.protections.map((p) => [p.protection, p.enforced]),
      );
    } finally {
      process.env.PATH = path;
      await rm(bin, { recursive: true, force: true });
    }
  }, 120_000);

  it('a run the sandbox itself failed (no exit status from its PID 1, no process) rejects instead of scoring', () => {
    const namespaces = { namespaces: true };
    expect(sandboxFailure(namespaces, '0\n', null)).toBeUndefined();
    expect(sandboxFailure(namespaces, '137\n', null)).toBeUndefined(); // the program was killed: its doing
    expect(sandboxFailure(namespaces, '', 'timeout')).toBeUndefined(); // this process killed it
    expect(sandboxFailure(namespaces, '', null)).toMatch(/did not run the program/);
    expect(sandboxFailure({ namespaces: false }, '', null)).toBeUndefined(); // no reporter without namespaces
    expect(sandboxFailure(namespaces, '', null, new Error('spawn EAGAIN'))).toBe(
      'could not start the sandbox: spawn EAGAIN',
    );
  });

  it('not root, the program runs as root of a user namespace with every capability dropped', async () => {
    if (process.getuid?.() !== 0) {
      // Here the real path is the one under test: the shared sandbox above runs this way.
      expect(sandbox.protections.find((p) => p.protection === 'privileges')!.detail).toMatch(
        /no capabilities/,
      );
      return;
    }
    // As root, take the path a user's process takes (unshare --map-root-user), with the caps dropped.
    const uid = vi.spyOn(process, 'getuid').mockReturnValue(1000);
    try {
      const user = await Sandbox.create({ require: [], timeoutMs: 5_000 });
      const privileges = user.protections.find((p) => p.protection === 'privileges')!;
      if (!user.enforces('signals')) {
        console.warn(`NOT CHECKED: no namespaces here: ${privileges.detail}`);
        return;
      }
      expect(privileges.detail).toMatch(/user namespace's root, no capabilities \(setpriv\)/);
      // The program still runs and is scored under the dropped capabilities.
      const results = await user.run(SUM, SUM_TESTS, never);
      expect(results.map((r) => r.status)).toEqual(['passed', 'passed', 'passed', 'passed']);
    } finally {
      uid.mockRestore();
    }
  }, 60_000);
});
