/**
 * A sandbox that runs an untrusted JavaScript program (a policy's answer to a programming task) against
 * test cases, one fresh process per test, with the same `node` binary as this process.
 *
 * Layers, each detected at run time and verified by a probe program before the first run:
 *
 * | protection     | mechanism                                                                                    |
 * | -------------- | -------------------------------------------------------------------------------------------- |
 * | `filesystem`   | Node's permission model: reads and writes only inside the scratch directory (and, with a     |
 * |                | private root, the rest of the machine is not even mounted: see `localSockets`)               |
 * | `processes`    | Node's permission model: no child_process, worker_threads, native addons, WASI, inspector    |
 * | `network`      | a network namespace with no interface up (`unshare --net`): nothing, not even 127.0.0.1      |
 * | `localSockets` | a private root (mount namespace + chroot into a tmpfs holding read-only binds of the system  |
 * |                | directories and a tmpfs scratch): Unix sockets by path (databases, D-Bus, Docker) are absent |
 * |                | — neither the permission model nor a network namespace stops those                           |
 * | `signals`      | a PID namespace: the program sees no process outside it, so it can signal none               |
 * | `memory`       | RLIMIT_DATA (malloc, ArrayBuffers, the V8 heap) plus V8's `--max-old-space-size`             |
 * | `cpu`          | RLIMIT_CPU (the wall-clock timeout, which kills the process group, is always on)             |
 * | `fileSize`     | RLIMIT_FSIZE per file, and the scratch tmpfs's size with a private root                      |
 * | `privileges`   | not root: when this process is root, the program runs as nobody (`setpriv`); when it is not, |
 * |                | the program is root of its user namespace with every capability dropped (`setpriv`)          |
 *
 * Output beyond `outputBytes` (stdout and stderr together) kills the process group, and so does the
 * wall-clock timeout (inside the namespaces a watchdog does it too, should this process die first); the
 * scratch directory is removed afterwards. RLIMIT_NPROC is deliberately not used: it counts every process of
 * the user id on the machine, root is exempt from it, and the permission model already forbids
 * creating processes.
 *
 * A protection that cannot be enforced is refused (`SandboxUnavailableError`) unless it is left out
 * of `require`, in which case the sandbox warns once and reports it in `protections`.
 */
import { spawn } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import { accessSync, constants, existsSync, lstatSync, readlinkSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { availableParallelism, constants as osConstants, tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';

export type TestStatus = 'passed' | 'failed' | 'timed_out' | 'crashed' | 'output_limit';

export interface TestCase {
  /** Written to the program's stdin. */
  input: string;
  /** Compared with its stdout, line by line, each line trimmed, leading and trailing blank lines ignored. */
  output: string;
}

export interface TestResult {
  status: TestStatus;
  /** What the program printed on stdout (at most `outputBytes`). */
  stdout: string;
  /** The start of what it printed on stderr (at most `excerptBytes`). */
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  durationMs: number;
}

export const PROTECTIONS = [
  'filesystem',
  'processes',
  'network',
  'localSockets',
  'signals',
  'memory',
  'cpu',
  'fileSize',
  'privileges',
] as const;
export type Protection = (typeof PROTECTIONS)[number];

export interface ProtectionStatus {
  protection: Protection;
  enforced: boolean;
  /** How it is enforced, or why it is not. */
  detail: string;
}

/** The mechanisms the sandbox may use; `without` turns some off (to test fallbacks, or where one misbehaves). */
export type Mechanism = 'permission-model' | 'namespaces' | 'private-root' | 'rlimits' | 'drop-privileges';

export interface SandboxLimits {
  /** Wall-clock limit of one test, process start included. */
  timeoutMs: number;
  /** RLIMIT_CPU (soft; SIGKILL one second later). */
  cpuSeconds: number;
  /** RLIMIT_DATA and the V8 old-space limit. */
  memoryMb: number;
  /** stdout and stderr together. */
  outputBytes: number;
  /** RLIMIT_FSIZE: the largest file the program may write. */
  fileBytes: number;
  /** Size of the scratch tmpfs (with a private root). */
  scratchBytes: number;
}

export interface SandboxOptions extends Partial<SandboxLimits> {
  /** Protections the sandbox must enforce or refuse to run (default: all of them). */
  require?: readonly Protection[];
  without?: readonly Mechanism[];
  /** Most programs running at once (default: the number of CPUs). */
  concurrency?: number;
  /** Bytes of stderr kept in each result (default 2,000). */
  excerptBytes?: number;
  /** Who the program runs as when this process is root (default nobody, 65534). */
  runAs?: { uid: number; gid: number };
  /** Told once, at creation, which protections are not enforced though not required (default console.warn). */
  onWarning?: (message: string) => void;
}

export class SandboxUnavailableError extends Error {
  constructor(readonly missing: ProtectionStatus[]) {
    super(
      `sandbox refused: required protections unavailable on this machine:\n` +
        missing.map((p) => `  ${p.protection}: ${p.detail}`).join('\n') +
        `\n(leave them out of options.require to run without them)`,
    );
    this.name = 'SandboxUnavailableError';
  }
}

/** The sandbox failed to run a program (not the program's doing): the reward rejects rather than score it. */
export class SandboxFailedError extends Error {
  override name = 'SandboxFailedError';
}

const DEFAULT_TIMEOUT_MS = 5_000;

/** Lines trimmed, leading and trailing blank lines ignored, \r\n as \n. */
export function outputsMatch(actual: string, expected: string): boolean {
  const lines = (s: string) =>
    s
      .replace(/\r\n?/g, '\n')
      .trim()
      .split('\n')
      .map((l) => l.trim());
  const a = lines(actual);
  const b = lines(expected);
  return a.length === b.length && a.every((line, i) => line === b[i]);
}

// ---------------------------------------------------------------------------------------------------
// Tools and plans

interface Tools {
  sh: string | null;
  unshare: string | null;
  prlimit: string | null;
  setpriv: string | null;
}

const STANDARD_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

function searchPath(): string {
  const dirs = (process.env['PATH'] ?? '').split(delimiter).filter((d) => d.startsWith('/'));
  return [...new Set([...dirs, ...STANDARD_DIRS])].join(':');
}

function which(name: string): string | null {
  if (process.platform === 'win32') return null;
  for (const dir of searchPath().split(':')) {
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // next
    }
  }
  return null;
}

function permissionFlag(): string | null {
  const flags = process.allowedNodeEnvironmentFlags;
  if (flags.has('--permission')) return '--permission';
  if (flags.has('--experimental-permission')) return '--experimental-permission';
  return null;
}

/** One way of running a program: which mechanisms, in which order. */
interface Plan {
  permission: string | null;
  namespaces: boolean;
  privateRoot: boolean;
  rlimits: 'prlimit' | 'ulimit' | null;
  drop: { uid: number; gid: number } | null;
  tools: Tools;
}

/** The plans to try, strongest first. */
function candidatePlans(without: ReadonlySet<Mechanism>, runAs: { uid: number; gid: number }): Plan[] {
  const tools: Tools = {
    sh: which('sh'),
    unshare: which('unshare'),
    prlimit: which('prlimit'),
    setpriv: which('setpriv'),
  };
  const permission = without.has('permission-model') ? null : permissionFlag();
  const rlimits = without.has('rlimits') ? null : tools.prlimit ? 'prlimit' : tools.sh ? 'ulimit' : null;
  const isRoot = process.getuid?.() === 0;
  const drops =
    isRoot && tools.setpriv && !without.has('drop-privileges') ? [runAs, null] : [null as Plan['drop']];
  const isolation: { namespaces: boolean; privateRoot: boolean }[] = [];
  if (tools.unshare && tools.sh && !without.has('namespaces')) {
    if (!without.has('private-root')) isolation.push({ namespaces: true, privateRoot: true });
    isolation.push({ namespaces: true, privateRoot: false });
  }
  isolation.push({ namespaces: false, privateRoot: false });
  return drops.flatMap((drop) => isolation.map((iso) => ({ permission, rlimits, drop, tools, ...iso })));
}

/**
 * What a private root holds of the machine: read-only binds of the system directories and of node's and
 * the tools' directories, and the top-level symbolic links among them (merged /usr: /bin -> usr/bin).
 */
function systemDirs(plan: Plan): { binds: string[]; links: [string, string][] } {
  const binds: string[] = [];
  const links: [string, string][] = [];
  for (const d of ['/usr', '/lib', '/lib64', '/lib32', '/libx32', '/bin', '/sbin']) {
    if (!existsSync(d)) continue;
    if (lstatSync(d).isSymbolicLink()) links.push([d, readlinkSync(d)]);
    else binds.push(d);
  }
  const covered = (d: string) =>
    [...binds, ...links.map(([l]) => l)].some((b) => d === b || d.startsWith(`${b}/`));
  for (const file of [process.execPath, ...Object.values(plan.tools)]) {
    if (!file) continue;
    const d = dirname(file);
    if (!covered(d) && !lstatSync(d).isSymbolicLink()) binds.push(d);
  }
  return { binds, links };
}

/**
 * Runs inside the new namespaces as (namespace) root: a tmpfs root holding read-only binds of the system
 * directories, /dev/null and /dev/urandom, and a tmpfs scratch owned by the program's user, holding the
 * program; then execs the rest. Arguments: stage uid gid size binds... -- (link target)... -- command...
 */
const PRIVATE_ROOT_SETUP = `set -eu
stage=$1 uid=$2 gid=$3 size=$4
shift 4
root=$stage/root
mount -t tmpfs -o size=1m,nr_inodes=1024,mode=755 rxrl-root "$root"
mkdir "$root/dev" "$root/scratch"
: > "$root/dev/null"
: > "$root/dev/urandom"
while [ "$1" != -- ]; do
  mkdir -p "$root$1"
  mount --rbind -o ro "$1" "$root$1"
  shift
done
shift
while [ "$1" != -- ]; do
  ln -s "$2" "$root$1"
  shift 2
done
shift
mount --bind /dev/null "$root/dev/null"
mount --bind /dev/urandom "$root/dev/urandom"
mount -t tmpfs -o "size=$size,nr_inodes=4096,mode=700,uid=$uid,gid=$gid" rxrl-scratch "$root/scratch"
cp "$stage/main.js" "$root/scratch/main.js"
exec "$@"`;

/**
 * PID 1 of the namespaces: runs the program (in directory $1) with fd 3 closed, then writes its exit
 * status (128 + signal if killed) to fd 3. A watchdog kills everything after $2 seconds even if this
 * process's parent is gone (the wall-clock timeout here fires first).
 */
const STATUS_REPORTER = `cd "$1"
limit=$2
shift 2
(sleep "$limit"; kill -KILL 0) </dev/null >/dev/null 2>&1 3>&- &
status=0
"$@" 3>&- || status=$?
echo "$status" >&3`;

const ULIMIT = `set -e
ulimit -c 0
ulimit -S -t "$1"
ulimit -H -t $(($1 + 1))
ulimit -d "$2"
ulimit -f "$3"
shift 3
exec "$@"`;

/** The command line that runs `<stage>/main.js` under a plan. */
function commandLine(plan: Plan, stage: string, limits: SandboxLimits): string[] {
  const scratch = plan.privateRoot ? '/scratch' : stage;
  const node = [
    process.execPath,
    '--no-warnings',
    ...(plan.permission
      ? [plan.permission, `--allow-fs-read=${scratch}`, `--allow-fs-write=${scratch}`]
      : []),
    `--max-old-space-size=${limits.memoryMb}`,
    join(scratch, 'main.js'),
  ];
  const cpu = Math.max(1, Math.ceil(limits.cpuSeconds));
  const memoryBytes = limits.memoryMb * 1024 * 1024;
  const rlimits =
    plan.rlimits === 'prlimit'
      ? [
          plan.tools.prlimit!,
          `--cpu=${cpu}:${cpu + 1}`,
          `--data=${memoryBytes}`,
          `--fsize=${limits.fileBytes}`,
          '--core=0',
          '--',
        ]
      : plan.rlimits === 'ulimit'
        ? [
            plan.tools.sh!,
            '-c',
            ULIMIT,
            'rxrl-sandbox',
            String(cpu),
            String(Math.ceil(memoryBytes / 1024)),
            String(Math.max(1, Math.floor(limits.fileBytes / 512))),
          ]
        : [];
  // Root drops to another user and every capability. Not root, the namespaces map this user to root
  // of a user namespace, with every capability there (chroot among them: a way out of the private root
  // once the program could make the syscall): it drops them all, so that what it execs has none.
  const setpriv =
    plan.tools.setpriv && (plan.drop || plan.namespaces)
      ? [
          plan.tools.setpriv,
          '--no-new-privs',
          ...(plan.drop ? [`--reuid=${plan.drop.uid}`, `--regid=${plan.drop.gid}`, '--clear-groups'] : []),
          '--inh-caps=-all',
          '--bounding-set=-all',
          '--',
        ]
      : [];
  const inner = [...setpriv, ...rlimits, ...node];
  if (!plan.namespaces) return inner;
  const isRoot = process.getuid?.() === 0;
  const unshare = [
    plan.tools.unshare!,
    '--fork',
    '--kill-child',
    '--net',
    '--pid',
    '--ipc',
    '--uts',
    ...(plan.privateRoot ? ['--mount'] : []),
    ...(isRoot ? [] : ['--map-root-user']),
    '--',
  ];
  // PID 1 of the namespace is a shell that waits for node and reports its exit status on fd 3:
  // unshare does not always pass on the signal that killed its child (SIGXCPU, SIGXFSZ).
  const watchdog = String(Math.ceil(limits.timeoutMs / 1000) + 2);
  const reporter = (cwd: string) => [
    plan.tools.sh!,
    '-c',
    STATUS_REPORTER,
    'rxrl-sandbox',
    cwd,
    watchdog,
    ...inner,
  ];
  if (!plan.privateRoot) return [...unshare, ...reporter(stage)];
  const owner = plan.drop ?? { uid: 0, gid: 0 };
  const system = systemDirs(plan);
  return [
    ...unshare,
    plan.tools.sh!,
    '-c',
    PRIVATE_ROOT_SETUP,
    'rxrl-sandbox',
    stage,
    String(owner.uid),
    String(owner.gid),
    String(limits.scratchBytes),
    ...system.binds,
    '--',
    ...system.links.flat(),
    '--',
    'chroot',
    join(stage, 'root'),
    ...reporter('/scratch'),
  ];
}

// ---------------------------------------------------------------------------------------------------
// Running one program

interface RawRun {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  killedFor: 'timeout' | 'output' | null;
  durationMs: number;
}

interface RunSettings {
  limits: SandboxLimits;
  excerptBytes: number;
  running: Set<object>;
}

async function runOnce(
  plan: Plan,
  program: string,
  input: string,
  settings: RunSettings,
  signal?: AbortSignal,
): Promise<RawRun> {
  const { limits } = settings;
  const stage = await realpath(await mkdtemp(join(tmpdir(), 'rxrl-sandbox-')));
  try {
    const main = join(stage, 'main.js');
    await writeFile(main, program, { mode: 0o644 });
    if (plan.privateRoot) await mkdir(join(stage, 'root'));
    else if (plan.drop) {
      await chown(stage, plan.drop.uid, plan.drop.gid);
      await chown(main, plan.drop.uid, plan.drop.gid);
    }
    await chmod(stage, 0o700);
    const [file, ...args] = commandLine(plan, stage, limits);
    signal?.throwIfAborted();
    return await new Promise<RawRun>((resolve, reject) => {
      const start = performance.now();
      const child = spawn(file!, args, {
        cwd: stage,
        env: { PATH: searchPath() },
        stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
        detached: true, // its own process group, so that one kill reaches every process it made
      });
      let killedFor: RawRun['killedFor'] | 'abort' = null;
      let done = false;
      const exit: { code: number | null; signal: NodeJS.Signals | null } = { code: null, signal: null };
      const kill = (why: NonNullable<typeof killedFor>) => {
        killedFor ??= why;
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
        // Should something outside the group still hold the pipes, do not wait for them.
        setTimeout(() => finish(exit.code, exit.signal), 2_000).unref();
      };
      // A program that has exited by then (its pipes still draining) is not timed out.
      const timer = setTimeout(() => {
        if (exit.code === null && exit.signal === null) kill('timeout');
      }, limits.timeoutMs);
      const onAbort = () => kill('abort');
      signal?.addEventListener('abort', onAbort, { once: true });
      const token = {};
      settings.running.add(token);

      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      let bytes = 0;
      let stderrBytes = 0;
      child.stdout.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > limits.outputBytes) return kill('output');
        stdout.push(chunk);
      });
      child.stderr.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (stderrBytes < settings.excerptBytes) {
          stderr.push(chunk);
          stderrBytes += chunk.length;
        }
        if (bytes > limits.outputBytes) kill('output');
      });
      child.stdin.on('error', () => {}); // EPIPE when the program does not read its input
      child.stdin.end(input);
      let reported = '';
      const statusPipe = child.stdio[3] as Readable | null;
      statusPipe?.on('data', (chunk: Buffer) => {
        if (reported.length < 16) reported += chunk.toString('latin1');
      });
      statusPipe?.on('error', () => {});

      child.on('exit', (code, sig) => {
        exit.code = code;
        exit.signal = sig;
      });
      const finish = (code: number | null, sig: NodeJS.Signals | null, spawnError?: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        settings.running.delete(token);
        child.stdout.destroy();
        child.stderr.destroy();
        statusPipe?.destroy();
        if (killedFor === 'abort') return reject(signal?.reason ?? new Error('sandbox run aborted'));
        const err = Buffer.concat(stderr).toString('utf8').slice(0, settings.excerptBytes);
        // The sandbox, not the program, failed: no process, or (in the namespaces) no exit status from
        // their PID 1, which nothing inside can kill. Not the program's fault: the reward rejects.
        const failed = sandboxFailure(plan, reported, killedFor, spawnError);
        if (failed) return reject(new SandboxFailedError(`${failed}${err ? `: ${err.trim()}` : ''}`));
        const status = REPORTED_STATUS.test(reported) ? Number(reported) : null;
        const program = status === null ? { code, sig } : programExit(status);
        resolve({
          stdout: Buffer.concat(stdout).toString('utf8'),
          stderr: err,
          exitCode: program.code,
          signal: program.sig,
          killedFor,
          durationMs: performance.now() - start,
        });
      };
      child.on('error', (err) => finish(null, null, err));
      child.on('close', (code, sig) => finish(code, sig));
    });
  } finally {
    await rm(stage, { recursive: true, force: true }).catch(() => {});
  }
}

/** What the namespaces' PID 1 writes on fd 3: the program's exit status ($?). */
const REPORTED_STATUS = /^\d+\n?$/;

/**
 * Why a run says nothing of the program because the sandbox failed to run it (undefined: it ran): the
 * process could not start, or in the namespaces their PID 1 (the reporter, which nothing inside can
 * kill) reported no exit status and this process did not kill it (unshare refused: namespaces used up;
 * the private root's setup failed).
 */
export function sandboxFailure(
  plan: Pick<Plan, 'namespaces'>,
  reported: string,
  killedFor: string | null,
  spawnError?: Error,
): string | undefined {
  if (spawnError) return `could not start the sandbox: ${spawnError.message}`;
  if (plan.namespaces && killedFor === null && !REPORTED_STATUS.test(reported))
    return 'the sandbox did not run the program (its namespaces or private root could not be set up)';
  return undefined;
}

/** A shell's $? as an exit code or the signal that killed the program. */
function programExit(status: number): { code: number | null; sig: NodeJS.Signals | null } {
  if (status > 128) {
    const name = Object.entries(osConstants.signals).find(([, n]) => n === status - 128)?.[0];
    if (name) return { code: null, sig: name as NodeJS.Signals };
  }
  return { code: status, sig: null };
}

function statusOf(run: RawRun, expected: string): TestStatus {
  if (run.killedFor === 'output' || run.signal === 'SIGXFSZ') return 'output_limit';
  if (run.killedFor === 'timeout' || run.signal === 'SIGXCPU') return 'timed_out';
  if (run.exitCode !== 0) return 'crashed';
  return outputsMatch(run.stdout, expected) ? 'passed' : 'failed';
}

// ---------------------------------------------------------------------------------------------------
// Probing what a plan really enforces

const PROBE = String.raw`
const fs = require('fs');
const net = require('net');
const cfg = JSON.parse(fs.readFileSync(0, 'utf8'));
const attempt = (f) => { try { f(); return 'allowed'; } catch (e) { return String(e.code || e.name); } };
const out = {};
out.read = attempt(() => { if (fs.readFileSync(cfg.sentinel, 'utf8') !== 'sentinel') throw new Error('other'); });
out.write = attempt(() => fs.writeFileSync(cfg.sentinel + '.written', 'x'));
out.spawn = attempt(() => { const r = require('child_process').spawnSync(process.execPath, ['-e', '0']); if (r.error) throw r.error; });
out.worker = attempt(() => { new (require('worker_threads').Worker)('0', { eval: true }).terminate(); });
out.alloc = attempt(() => { Buffer.allocUnsafe(cfg.allocBytes); });
out.signal = attempt(() => process.kill(cfg.parent, 0));
const connect = (target) => new Promise((resolve) => {
  const s = net.connect(target);
  const end = (r) => { s.destroy(); resolve(r); };
  s.on('connect', () => end('connected'));
  s.on('error', (e) => end(String(e.code)));
  setTimeout(() => end('no answer'), 1000);
});
Promise.all([connect({ host: '127.0.0.1', port: cfg.port }), connect({ path: cfg.socket })]).then(([tcp, unix]) => {
  out.tcp = tcp;
  out.unix = unix;
  console.log(JSON.stringify(out));
});
`;

/** What the probe program could do (`allowed`) or the error code that stopped it. */
interface ProbeReport {
  read: string;
  write: string;
  spawn: string;
  worker: string;
  alloc: string;
  signal: string;
  tcp: string;
  unix: string;
}

interface ProbeOutcome {
  plan: Plan;
  protections: ProtectionStatus[];
}

interface ProbeContext {
  without: ReadonlySet<Mechanism>;
  /** Why each stronger plan could not run. */
  failures: { plan: Plan; error: string }[];
}

function listen(server: Server, target: { port: number; host: string } | string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    if (typeof target === 'string') server.listen(target, resolve);
    else server.listen(target.port, target.host, resolve);
  });
}

/** Runs the probe program under each plan, strongest first, and judges the first that runs. */
async function probe(
  plans: Plan[],
  limits: SandboxLimits,
  without: ReadonlySet<Mechanism>,
): Promise<ProbeOutcome> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), 'rxrl-sandbox-probe-')));
  const connections = { tcp: 0, unix: 0 };
  const tcp = createServer((c) => {
    connections.tcp++;
    c.destroy();
  });
  const unix = createServer((c) => {
    connections.unix++;
    c.destroy();
  });
  const context: ProbeContext = { without, failures: [] };
  try {
    // World-accessible, so that only the sandbox, not file permissions, keeps the program out.
    const open = join(dir, 'open');
    await chmod(dir, 0o755);
    await mkdir(open);
    await chmod(open, 0o777);
    const sentinel = join(open, 'sentinel');
    await writeFile(sentinel, 'sentinel');
    await chmod(sentinel, 0o666);
    const socket = join(dir, 'probe.sock');
    await listen(tcp, { port: 0, host: '127.0.0.1' });
    await listen(unix, socket);
    await chmod(socket, 0o777);
    const input = JSON.stringify({
      sentinel,
      port: (tcp.address() as { port: number }).port,
      socket,
      parent: process.pid,
      allocBytes: (limits.memoryMb + 64) * 1024 * 1024,
    });
    const settings: RunSettings = {
      limits: { ...limits, timeoutMs: Math.max(limits.timeoutMs, 15_000) },
      excerptBytes: 2_000,
      running: new Set(),
    };
    // Each plan gets a second try before a weaker one is taken: the weaker plan is kept for the process,
    // and one probe may fail for a passing reason (a machine too loaded to start it in time, EAGAIN).
    for (const plan of plans) {
      for (let attempt = 1; attempt <= 2; attempt++) {
        let run: RawRun;
        try {
          run = await runOnce(plan, PROBE, input, settings);
        } catch (error) {
          // This plan could not run a program (namespaces refused, say).
          if (!(error instanceof SandboxFailedError)) throw error;
          context.failures.push({ plan, error: `attempt ${attempt}: ${error.message}` });
          continue;
        }
        let report: ProbeReport;
        try {
          report = JSON.parse(run.stdout.trim().split('\n').pop() ?? '') as ProbeReport;
        } catch {
          const said = run.stderr.trim().split('\n').slice(-2).join(' | ');
          context.failures.push({
            plan,
            error: `attempt ${attempt}: ${said || `exit ${run.exitCode ?? run.signal}`}`,
          });
          continue;
        }
        const written = existsSync(`${sentinel}.written`);
        return { plan, protections: judge(plan, report, { ...connections }, written, context) };
      }
    }
    throw new Error(
      `sandbox: no way to run a program here:\n  ` +
        context.failures.map((f) => `${describePlan(f.plan)}: ${f.error}`).join('\n  '),
    );
  } finally {
    tcp.close();
    unix.close();
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

function describePlan(plan: Plan): string {
  return [
    plan.permission ? 'permission model' : 'no permission model',
    plan.namespaces ? (plan.privateRoot ? 'namespaces + private root' : 'namespaces') : 'no namespaces',
    plan.rlimits ? `rlimits (${plan.rlimits})` : 'no rlimits',
    plan.drop ? `as uid ${plan.drop.uid}` : 'as this user',
  ].join(', ');
}

function judge(
  plan: Plan,
  r: ProbeReport,
  connections: { tcp: number; unix: number },
  written: boolean,
  context: ProbeContext,
): ProtectionStatus[] {
  const { without, failures } = context;
  const off = (m: Mechanism) => `turned off (options.without: '${m}')`;
  const failed = (pick: (p: Plan) => boolean) => {
    const f = failures.find((x) => pick(x.plan));
    return f ? `it failed here: ${f.error}` : 'it did not run here';
  };
  const noPermission = without.has('permission-model')
    ? off('permission-model')
    : `Node ${process.version} has no permission model (needs Node 20+)`;
  const noNamespaces = without.has('namespaces')
    ? off('namespaces')
    : !plan.tools.unshare
      ? '`unshare` (util-linux) not found'
      : !plan.tools.sh
        ? '`sh` not found'
        : `unshare could not create namespaces (user namespaces not permitted?): ${failed((p) => p.namespaces)}`;
  const noPrivateRoot = plan.namespaces
    ? without.has('private-root')
      ? off('private-root')
      : `no mount namespace + chroot: ${failed((p) => p.privateRoot)}`
    : noNamespaces;
  const noRlimits = without.has('rlimits') ? off('rlimits') : 'neither `prlimit` nor `sh` found';
  const perm = plan.permission
    ? `Node permission model (${plan.permission}, fs access only to the scratch directory)`
    : null;
  const rl = plan.rlimits === 'prlimit' ? 'prlimit' : 'sh ulimit';
  const layers = (...xs: (string | false | null)[]) => xs.filter(Boolean).join(' + ');
  const isRoot = process.getuid?.() === 0;
  const status = (protection: Protection, enforced: boolean, how: string, whyNot: string) => ({
    protection,
    enforced,
    detail: enforced ? how : whyNot,
  });
  return [
    status(
      'filesystem',
      !!plan.permission && r.read !== 'allowed' && r.write !== 'allowed' && !written,
      layers(perm, plan.privateRoot && 'private root', plan.drop && `uid ${plan.drop.uid}`),
      plan.permission ? 'the probe read or wrote a file outside the scratch directory' : noPermission,
    ),
    status(
      'processes',
      !!plan.permission && r.spawn !== 'allowed' && r.worker !== 'allowed',
      `${perm}: child_process, worker_threads, addons and WASI denied`,
      plan.permission ? 'the probe started a process or a worker' : noPermission,
    ),
    status(
      'network',
      plan.namespaces && connections.tcp === 0 && r.tcp !== 'connected',
      'network namespace with no interface up (unshare --net)',
      plan.namespaces ? 'the probe reached a TCP server on 127.0.0.1' : noNamespaces,
    ),
    status(
      'localSockets',
      plan.privateRoot && connections.unix === 0 && r.unix !== 'connected',
      'private root (mount namespace, chroot into a tmpfs with read-only system directories)',
      plan.privateRoot
        ? 'the probe reached a Unix socket outside the sandbox'
        : `Unix sockets are reachable by path: ${noPrivateRoot}`,
    ),
    status(
      'signals',
      plan.namespaces && r.signal === 'ESRCH',
      'PID namespace (unshare --pid): no other process is visible',
      plan.namespaces ? 'the probe could see a process outside the sandbox' : noNamespaces,
    ),
    status(
      'memory',
      !!plan.rlimits && r.alloc !== 'allowed',
      `RLIMIT_DATA (${rl}) + --max-old-space-size`,
      plan.rlimits ? 'the probe allocated more than the limit' : noRlimits,
    ),
    status(
      'cpu',
      !!plan.rlimits,
      `RLIMIT_CPU (${rl}, which refuses to start the program if it cannot set it) + wall-clock kill`,
      noRlimits,
    ),
    status(
      'fileSize',
      !!plan.rlimits,
      layers(`RLIMIT_FSIZE (${rl})`, plan.privateRoot && 'scratch tmpfs size'),
      noRlimits,
    ),
    status(
      'privileges',
      !isRoot || !!plan.drop,
      isRoot
        ? `runs as uid ${plan.drop?.uid} (setpriv, no capabilities, no_new_privs)`
        : plan.namespaces && plan.tools.setpriv
          ? "not root; in its user namespace's root, no capabilities (setpriv), no_new_privs"
          : 'not root',
      without.has('drop-privileges')
        ? `this process is root and dropping privileges is ${off('drop-privileges')}`
        : 'this process is root and `setpriv` (util-linux) is missing: the program would run as root',
    ),
  ];
}

const probes = new Map<string, Promise<ProbeOutcome>>();

// ---------------------------------------------------------------------------------------------------

/** A bounded number of programs at once. */
class Slots {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}

  async acquire(signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    if (this.free > 0) {
      this.free--;
      return () => this.release();
    }
    return new Promise((resolve, reject) => {
      const go = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve(() => this.release());
      };
      const onAbort = () => {
        this.waiting = this.waiting.filter((w) => w !== go);
        reject(signal!.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(go);
    });
  }

  private release() {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

export class Sandbox {
  private readonly slots: Slots;
  private readonly live = new Set<object>();

  private constructor(
    private readonly plan: Plan,
    readonly protections: ProtectionStatus[],
    readonly limits: SandboxLimits,
    private readonly excerptBytes: number,
    concurrency: number,
  ) {
    this.slots = new Slots(concurrency);
  }

  /** Probes this machine (once per process and set of options), then refuses, warns, or returns. */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const limits: SandboxLimits = {
      timeoutMs,
      cpuSeconds: options.cpuSeconds ?? Math.ceil(timeoutMs / 1000) + 1,
      memoryMb: options.memoryMb ?? 256,
      outputBytes: options.outputBytes ?? 64 * 1024,
      fileBytes: options.fileBytes ?? 1024 * 1024,
      scratchBytes: options.scratchBytes ?? 8 * 1024 * 1024,
    };
    const without = new Set(options.without ?? []);
    const runAs = options.runAs ?? { uid: 65534, gid: 65534 };
    const key = JSON.stringify([[...without].sort(), runAs, limits.memoryMb, process.getuid?.()]);
    let probed = probes.get(key);
    if (!probed) {
      probed = probe(candidatePlans(without, runAs), limits, without);
      probes.set(key, probed);
      probed.catch(() => probes.delete(key));
    }
    const { plan, protections } = await probed;
    const required = new Set(options.require ?? PROTECTIONS);
    const missing = protections.filter((p) => !p.enforced && required.has(p.protection));
    if (missing.length > 0) throw new SandboxUnavailableError(missing);
    const unenforced = protections.filter((p) => !p.enforced);
    if (unenforced.length > 0) {
      const warn = options.onWarning ?? ((m: string) => console.warn(m));
      warn(
        `sandbox: running WITHOUT ${unenforced.map((p) => p.protection).join(', ')}:\n` +
          unenforced.map((p) => `  ${p.protection}: ${p.detail}`).join('\n'),
      );
    }
    const concurrency = Math.max(1, options.concurrency ?? availableParallelism());
    return new Sandbox(plan, protections, limits, options.excerptBytes ?? 2_000, concurrency);
  }

  /** Whether a protection is enforced. */
  enforces(protection: Protection): boolean {
    return this.protections.some((p) => p.protection === protection && p.enforced);
  }

  /** One line per protection: what enforces it, or why nothing does. */
  describe(): string {
    return this.protections
      .map((p) => `${p.protection}: ${p.enforced ? 'enforced by' : 'NOT ENFORCED:'} ${p.detail}`)
      .join('\n');
  }

  /** Programs running now. */
  get running(): number {
    return this.live.size;
  }

  /**
   * Runs the program once per test, in a fresh process and scratch directory each, at most
   * `concurrency` processes at once across all callers. Never rejects
   * because of what the program does; rejects with the signal's reason when aborted (killing it).
   */
  async run(program: string, tests: readonly TestCase[], signal?: AbortSignal): Promise<TestResult[]> {
    // One listener on the caller's signal; the tests listen to a signal of our own.
    const inner = new AbortController();
    setMaxListeners(0, inner.signal);
    const forward = () => inner.abort(signal?.reason);
    if (signal?.aborted) forward();
    signal?.addEventListener('abort', forward, { once: true });
    // Settle every test before answering, so that no process outlives the call.
    const settled = await Promise.allSettled(tests.map((test) => this.runTest(program, test, inner.signal)));
    signal?.removeEventListener('abort', forward);
    const failure = settled.find((s) => s.status === 'rejected');
    if (failure) throw failure.reason;
    return settled.map((s) => (s as PromiseFulfilledResult<TestResult>).value);
  }

  async runTest(program: string, test: TestCase, signal?: AbortSignal): Promise<TestResult> {
    const release = await this.slots.acquire(signal);
    try {
      const settings = { limits: this.limits, excerptBytes: this.excerptBytes, running: this.live };
      const run = await runOnce(this.plan, program, test.input, settings, signal);
      return {
        status: statusOf(run, test.output),
        stdout: run.stdout,
        stderr: run.stderr,
        exitCode: run.exitCode,
        signal: run.signal,
        durationMs: Math.round(run.durationMs),
      };
    } finally {
      release();
    }
  }
}
