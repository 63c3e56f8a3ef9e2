import { availableParallelism } from 'node:os';
import cliProgress from 'cli-progress';
import { Option, type Command } from 'commander';
import { Subject } from 'rxjs';
import type { ScoredRollout } from '../../../schemas/index.ts';
import { Metrics } from '../../metrics/metrics.ts';
import { createMetricsServer, type MetricsServer } from '../../metrics/server.ts';
import { BACKEND_REQUESTS, type BackendRequest } from '../../policy/backendRequest.ts';
import type { KafkaRole, KafkaRunEvent, KafkaRunSummary } from '../../run/kafka/types.ts';
import { KAFKA_ROLES } from '../../run/kafka/types.ts';
import type { RunEvent, RunSummary } from '../../run/r1zero.ts';
import {
  connectionOf,
  collect,
  nonNegativeInt,
  nonNegativeNumber,
  portNumber,
  positiveInt,
  withConnection,
  type ConnectionFlags,
} from '../options.ts';
import { defaultRunDir, loadAnyPipeline } from '../pipelines.ts';
import { describeRecipe } from '../../recipe/recipe.ts';

const fmt = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : '-');

/** The progress bar of GRPO steps; KL shows "-" where the learner keeps no reference (beta 0). */
export function progressDisplay() {
  const bar = new cliProgress.SingleBar(
    {
      format:
        'step {value}/{total} |{bar}| reward {reward} acc {acc} len {len} kl {kl} stale {stale} {tps} tok/s ETA {eta_formatted}',
      barsize: 20,
      etaBuffer: 20,
      noTTYOutput: true,
      notTTYSchedule: 10_000,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    on(event: RunEvent | KafkaRunEvent) {
      const say = (line: string) => console.log(started ? `\n${line}` : line);
      switch (event.kind) {
        case 'pretrain':
          if (event.step === 1 || event.step % 100 === 0 || event.step === event.total) {
            console.log(`pretrain: step ${event.step}/${event.total} loss ${fmt(event.loss, 3)}`);
          }
          break;
        case 'base-model':
          console.log(`base model: ${event.cached ? 'reused from' : 'saved to'} ${event.dir}`);
          break;
        case 'replacing':
          console.log(
            `${event.dir} held an earlier run${event.step !== undefined ? ` (at step ${event.step})` : ''}: moved to ${event.movedTo}, and this run starts anew (--resume continues a run; --run-dir keeps runs apart)`,
          );
          break;
        case 'backend':
          if ('role' in event) say(`backend (${event.role}): ${event.backend}`);
          else
            console.log(
              `backend: generator ${event.generator}, learner ${event.learner} (one worker thread each)`,
            );
          break;
        case 'topics':
          if (event.created.length > 0) say(`created topics: ${event.created.join(', ')}`);
          break;
        case 'warning':
          say(`warning: ${event.message}`);
          break;
        case 'waiting':
          say(`${event.role}: waiting for ${event.what}`);
          break;
        case 'resume':
          say(
            `resumed from version ${event.version}: prompt cursor ${event.promptCursor}, ${event.pending} groups pending, ${event.adopted} prompts adopted`,
          );
          break;
        case 'policy':
          say(`${event.worker}: policy version ${event.version}`);
          break;
        case 'rollouts':
          if (!started)
            say(
              `${event.worker}: ${event.rollouts} rollouts of ${event.prompts} prompts with version ${event.version} in ${fmt(event.seconds, 1)} s`,
            );
          break;
        case 'stopped':
          say(`${event.role}: stopped (${event.reason})`);
          break;
        case 'eval': {
          const r = event.result;
          // On a terminal the bar redraws itself below the line.
          say(
            `eval @ step ${event.step}: pass@1 ${fmt(r.pass1, 3)}  cons@${r.samplesPerQuestion} ${fmt(r.consAtK, 3)}  format ${fmt(r.formatRate)}  length ${fmt(r.meanLength, 1)}` +
              (r.languageConsistency !== null ? `  language ${fmt(r.languageConsistency)}` : '') +
              (r.stepAccuracy !== null ? `  steps ${fmt(r.stepAccuracy)}` : ''),
          );
          break;
        }
        case 'step': {
          const payload = {
            reward: fmt(event.rollout.rewardMean),
            acc: fmt(event.rollout.accuracy),
            len: fmt(event.rollout.lengthMean, 1),
            kl: event.report.kl === undefined ? '-' : fmt(event.report.kl, 4),
            stale: fmt(event.staleness, 1),
            tps: fmt(event.rollout.tokensPerSecond, 0),
          };
          if (!started) {
            bar.start(event.total, event.step, payload);
            started = true;
          } else bar.update(event.step, payload);
          break;
        }
        case 'checkpoint':
        case 'version-published':
          break;
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

export function printSummary(summary: RunSummary): void {
  const first = summary.evals[0];
  const last = summary.evals[summary.evals.length - 1];
  console.log(`\n${summary.steps} steps in ${fmt(summary.seconds / 60, 1)} min (${summary.backend.learner})`);
  if (first && last) {
    console.log(
      `held-out pass@1: ${fmt(first.result.pass1, 3)} at step ${first.step} -> ${fmt(last.result.pass1, 3)} at step ${last.step}`,
    );
    console.log(
      `held-out cons@${last.result.samplesPerQuestion}: ${fmt(first.result.consAtK, 3)} -> ${fmt(last.result.consAtK, 3)}`,
    );
  }
  const { generated, trained, drops } = summary.accounting;
  const dropped = Object.values(drops).reduce((a, b) => a + b, 0);
  console.log(`samples: ${generated} generated = ${trained} trained + ${dropped} dropped`);
  for (const [reason, n] of Object.entries(drops)) console.log(`  dropped (${reason}): ${n}`);
  if (generated !== trained + dropped)
    console.log(`  WARNING: ${generated - trained - dropped} samples unaccounted for`);
}

/**
 * The metrics server of `--dashboard [port]` or `--metrics-port <port>` (one server either way; with both,
 * their ports must agree), listening before the run starts so its first metrics are kept.
 */
async function serveMetrics(
  metrics: Metrics,
  completions: Subject<ScoredRollout>,
  opts: {
    dashboard?: number | true;
    metricsPort?: number;
    metricsHost: string;
    metricsAllowedHost?: string[];
  },
): Promise<MetricsServer | undefined> {
  if (opts.dashboard === undefined && opts.metricsPort === undefined) return undefined;
  const dashboardPort = typeof opts.dashboard === 'number' ? opts.dashboard : undefined;
  if (dashboardPort !== undefined && opts.metricsPort !== undefined && dashboardPort !== opts.metricsPort) {
    throw new Error('--dashboard and --metrics-port name one server: give the port once');
  }
  const server = createMetricsServer(metrics.stream, completions, {
    allowedHosts: opts.metricsAllowedHost ?? [],
  });
  try {
    const { url } = await server.listen(dashboardPort ?? opts.metricsPort ?? 0, opts.metricsHost);
    if (opts.dashboard !== undefined) console.log(`dashboard: ${url}/  (rxrl metrics --follow ${url})`);
    console.log(`metrics: ${url}/metrics (Prometheus), ${url}/metrics/stream (server-sent events)`);
  } catch (error) {
    await server.close();
    throw new Error(`The metrics server could not listen: ${(error as Error).message}`, { cause: error });
  }
  return server;
}

/** Waits `seconds` (the metrics server serving the final values meanwhile), or until Ctrl-C / SIGTERM. */
async function linger(seconds: number): Promise<void> {
  console.log(`metrics: serving the final values for ${seconds} s more (Ctrl-C to stop now)`);
  await new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      process.off('SIGINT', done).off('SIGTERM', done);
      resolve();
    };
    const timer = setTimeout(done, seconds * 1000);
    process.once('SIGINT', done).once('SIGTERM', done);
  });
}

function printKafkaSummary(summary: KafkaRunSummary): void {
  console.log(`\n${summary.role} of run ${summary.run} done in ${fmt(summary.seconds / 60, 1)} min`);
  const { learner, rollout, reward } = summary;
  if (learner) {
    const { prompts, samples } = learner;
    const dropped = Object.values(prompts.dropped).reduce((a, b) => a + b, 0);
    console.log(
      `learner: ${learner.steps} steps (${learner.backend})${learner.resumedFrom !== undefined ? `, resumed from version ${learner.resumedFrom}` : ''}`,
    );
    console.log(
      `prompts: ${prompts.published} published = ${prompts.trained} trained + ${dropped} dropped + ${prompts.pending} pending`,
    );
    for (const [reason, n] of Object.entries(prompts.dropped)) console.log(`  dropped (${reason}): ${n}`);
    const sampleDrops = Object.values(samples.dropped).reduce((a, b) => a + b, 0);
    console.log(
      `samples: ${samples.trained} trained, ${sampleDrops} dropped, ${samples.duplicates} duplicates skipped`,
    );
  }
  if (rollout)
    console.log(
      `rollout worker ${rollout.worker}: ${rollout.rollouts} rollouts of ${rollout.prompts} prompts, last version ${rollout.version} (${rollout.backend})`,
    );
  if (reward) console.log(`reward worker ${reward.worker}: ${reward.scored} rollouts scored`);
}

interface RunFlags extends ConnectionFlags {
  backend: BackendRequest;
  learnerThreads?: number;
  runDir?: string;
  cacheDir: string;
  resume?: boolean;
  steps?: number;
  eta?: number;
  dashboard?: number | true;
  metricsPort?: number;
  metricsHost: string;
  metricsAllowedHost?: string[];
  metricsLinger?: number;
  transport: 'memory' | 'kafka';
  role?: KafkaRole;
  run?: string;
  workerId?: string;
  partitions?: number;
  replicationFactor?: number;
  redo?: string[];
  until?: string;
}

/** The command-line names of option keys: workerId is --worker-id. */
const optionNames = (keys: readonly string[]): string[] =>
  keys.map((key) => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);

/** The options that only mean something on one transport, named when given on the other. */
function checkTransportFlags(flags: RunFlags, command: Command): void {
  const kafkaOnly: string[] = (
    [
      'role',
      'run',
      'workerId',
      'partitions',
      'replicationFactor',
      'brokers',
      'ssl',
      'saslMechanism',
      'retries',
    ] as const
  ).filter((key) => flags[key] !== undefined);
  // --client-id has a default: named only when given.
  if (command.getOptionValueSource('clientId') === 'cli') kafkaOnly.push('clientId');
  if (flags.transport === 'memory' && kafkaOnly.length > 0)
    command.error(
      `${optionNames(kafkaOnly).join(', ')} only ${kafkaOnly.length === 1 ? 'applies' : 'apply'} with --transport kafka`,
    );
  if (flags.transport === 'kafka') {
    if (!flags.role) command.error(`--transport kafka needs --role (${KAFKA_ROLES.join(' | ')})`);
    if (flags.resume)
      command.error(
        '--resume does not apply with --transport kafka: a learner resumes from the checkpoint in its --run-dir by itself',
      );
  }
}

export function registerRunCommand(program: Command): void {
  withConnection(
    program
      .command('run')
      .description(
        'Run a pipeline (a topology or a recipe in pipelines/, or a module by path): a topology on the embedded in-memory transport or one role of it over Kafka, a recipe stage by stage',
      )
      .argument('<pipeline>', 'pipeline name (pipelines/<name>.ts) or path to a topology or recipe module')
      .addOption(
        new Option('--transport <transport>', 'where the stages talk: in this process, or over Kafka topics')
          .choices(['memory', 'kafka'])
          .default('memory'),
      )
      .addOption(
        new Option(
          '--role <role>',
          'with --transport kafka: the part this process plays (learner: driver and optimizer; rollout and reward: workers, as many as wanted; all: the three)',
        ).choices(KAFKA_ROLES),
      )
      .option(
        '--run <name>',
        "with --transport kafka: names the run's topics <run>.* (default: the pipeline's name)",
      )
      .option('--worker-id <id>', 'with --transport kafka: names this worker in metrics (default: host-pid)')
      .option(
        '--partitions <n>',
        'with --transport kafka: partitions of the work topics the learner creates (default 3)',
        positiveInt,
      )
      .option(
        '--replication-factor <n>',
        "with --transport kafka: copies of each partition of the topics the learner creates (default: the broker's default.replication.factor)",
        positiveInt,
      )
      .addOption(
        new Option('--backend <backend>', 'the tfjs backend (auto: the best one installed)')
          .choices(BACKEND_REQUESTS)
          .default('auto'),
      )
      .option(
        '--learner-threads <n>',
        "threads for the GRPO learner's kernels (matmul, attention, LayerNorm...) on the wasm backend (its worker + n-1 helpers; same results; default: every core but the generator's, 1 with --transport kafka); pretraining and SFT use every core",
        positiveInt,
      )
      .option(
        '--run-dir <dir>',
        "where metrics.jsonl, state.json, the checkpoint and summary.json go (default runs/<name>: the topology's or recipe's name, or --run's over Kafka)",
      )
      .option('--cache-dir <dir>', 'where base models are cached', '.cache/base-models')
      .option('--resume', 'continue from the last checkpoint in the run directory')
      .option(
        '--steps <n>',
        "policy versions to train, one per batch (default: the topology's run.steps)",
        positiveInt,
      )
      .option(
        '--eta <n>',
        "the staleness bound in policy versions, 0 for synchronous (default: the topology's grpo.eta)",
        nonNegativeInt,
      )
      .option(
        '--dashboard [port]',
        'serve a live dashboard of the run, with /metrics (Prometheus) and /metrics/stream (SSE), on this port (default: a free one); its address is printed',
        portNumber,
      )
      .option(
        '--metrics-port <port>',
        'serve /metrics (Prometheus) and /metrics/stream (SSE) on this port (0: a free one), for scrapers and `rxrl metrics`',
        portNumber,
      )
      .option(
        '--metrics-host <host>',
        'address the metrics server listens on (on a loopback address it answers only requests for localhost: a guard against DNS rebinding)',
        '127.0.0.1',
      )
      .option(
        '--metrics-allowed-host <name>',
        'a Host name the metrics server answers besides localhost when on a loopback address (a reverse proxy that keeps Host, /etc/hosts); repeatable',
        collect,
      )
      .option(
        '--metrics-linger <seconds>',
        'keep the metrics server up this long after the run ends, so that a scraper gets the final values (Ctrl-C ends it sooner)',
        nonNegativeNumber,
      )
      .option(
        '--redo <stages>',
        'recipes: run these stages (comma-separated, or all) again although their output exists; the stages reading them follow',
        (value: string, previous: string[] = []) => [...previous, ...value.split(',').filter(Boolean)],
      )
      .option('--until <stage>', 'recipes: stop after this stage'),
  ).action(async (name: string, opts: RunFlags, command: Command) => {
    checkTransportFlags(opts, command);
    if (opts.learnerThreads !== undefined && opts.learnerThreads > availableParallelism())
      command.error(
        `--learner-threads ${opts.learnerThreads}: this machine has ${availableParallelism()} cores (more threads than cores only contend)`,
      );
    const pipeline = await loadAnyPipeline(name);
    if (pipeline.kind === 'recipe') {
      const { recipe } = pipeline;
      if (opts.transport === 'kafka')
        command.error(
          `${recipe.name} is a recipe: its stages run in this process (--transport kafka runs a topology)`,
        );
      if (opts.resume)
        command.error(
          `--resume does not apply to a recipe: finished stages are reused, an interrupted GRPO stage resumes`,
        );
      const given = (keys: readonly (keyof RunFlags)[]) =>
        keys.filter((key) => command.getOptionValueSource(key) === 'cli');
      const single = given(['steps', 'eta']);
      if (single.length > 0)
        command.error(
          `${optionNames(single).join(', ')} ${single.length === 1 ? 'applies' : 'apply'} to a single run; ${recipe.name} is a recipe, whose stages set their own steps and staleness (see \`rxrl describe ${recipe.name}\`)`,
        );
      const served = given([
        'dashboard',
        'metricsPort',
        'metricsHost',
        'metricsAllowedHost',
        'metricsLinger',
      ]);
      if (served.length > 0)
        command.error(
          `${optionNames(served).join(', ')} ${served.length === 1 ? 'applies' : 'apply'} to a single run; a recipe serves no live metrics: watch a stage's with rxrl dashboard runs/${recipe.name}/<stage>/metrics.jsonl`,
        );
      console.log(`${recipe.name}: ${recipe.description}`);
      const { runRecipeCommand } = await import('./recipe.ts');
      await runRecipeCommand(recipe, {
        backend: opts.backend,
        ...(opts.learnerThreads !== undefined ? { learnerThreads: opts.learnerThreads } : {}),
        runDir: opts.runDir ?? defaultRunDir(recipe.name),
        cacheDir: opts.cacheDir,
        ...(opts.redo ? { redo: opts.redo.includes('all') ? 'all' : opts.redo } : {}),
        ...(opts.until ? { until: opts.until } : {}),
      });
      return;
    }
    if (opts.redo || opts.until)
      command.error(`--redo and --until apply to recipes; ${name} is a single run`);
    const connection = opts.transport === 'kafka' ? connectionOf(opts, command) : undefined;
    const topology = pipeline.topology;
    console.log(`${topology.name}: ${topology.description}`);
    const run = opts.run ?? topology.name;
    const metrics = new Metrics({ run });
    const completions = new Subject<ScoredRollout>();
    // setTimeout's limit (2^31 - 1 ms): past it Node fires at once.
    if (opts.metricsLinger !== undefined && opts.metricsLinger > 2_147_483)
      command.error('--metrics-linger: at most 2147483 seconds (24.8 days)');
    if (opts.metricsLinger !== undefined && opts.dashboard === undefined && opts.metricsPort === undefined)
      command.error('--metrics-linger keeps the metrics server up: give --dashboard or --metrics-port too');
    const server = await serveMetrics(metrics, completions, opts);
    const display = progressDisplay();
    const runDir = opts.runDir ?? defaultRunDir(run);
    const common = {
      metrics,
      topology,
      backend: opts.backend,
      ...(opts.learnerThreads !== undefined ? { learnerThreads: opts.learnerThreads } : {}),
      runDir,
      cacheDir: opts.cacheDir,
      ...(opts.steps !== undefined ? { steps: opts.steps } : {}),
      ...(opts.eta !== undefined ? { eta: opts.eta } : {}),
      onEvent: (e: RunEvent | KafkaRunEvent) => display.on(e),
    };
    // Ctrl-C or SIGTERM: the roles leave their groups and the learner checkpoints before exiting.
    const controller = new AbortController();
    const stop = (signal: NodeJS.Signals) => {
      if (controller.signal.aborted) process.exit(130);
      console.log(`\n${signal}: stopping (again to exit at once)`);
      controller.abort();
    };
    try {
      if (connection && opts.role) {
        process.on('SIGINT', stop).on('SIGTERM', stop);
        const summary = await (
          await import('../../run/kafka/index.ts')
        ).runOverKafka({
          ...common,
          role: opts.role,
          connection,
          run,
          signal: controller.signal,
          ...(opts.workerId ? { workerId: opts.workerId } : {}),
          ...(opts.partitions ? { partitions: opts.partitions } : {}),
          ...(opts.replicationFactor ? { replicationFactor: opts.replicationFactor } : {}),
          ...(server ? { onCompletion: (s: ScoredRollout) => completions.next(s) } : {}),
        });
        display.stop();
        printKafkaSummary(summary);
      } else {
        const summary = await (
          await import('../../run/r1zero.ts')
        ).runR1Zero({
          ...common,
          ...(server ? { onCompletion: (s: ScoredRollout) => completions.next(s) } : {}),
          ...(opts.resume ? { resume: true } : {}),
        });
        display.stop();
        printSummary(summary);
      }
    } finally {
      process.off('SIGINT', stop).off('SIGTERM', stop);
      display.stop();
      completions.complete();
      if (server && opts.metricsLinger && !controller.signal.aborted) await linger(opts.metricsLinger);
      await server?.close();
    }
  });

  program
    .command('describe')
    .description(
      "Print a pipeline without running it: a topology's declaration, or a recipe's stages with what each reads and writes",
    )
    .argument('<pipeline>', 'pipeline name or path')
    .option(
      '--run-dir <dir>',
      "recipes: where the run would write, for the stages' paths (default runs/<recipe>)",
    )
    .option('--json', "print the declaration as JSON (a recipe's too)")
    .action(async (name: string, opts: { runDir?: string; json?: boolean }) => {
      const pipeline = await loadAnyPipeline(name);
      if (pipeline.kind === 'recipe' && !opts.json) {
        const runDir = opts.runDir ?? defaultRunDir(pipeline.recipe.name);
        console.log(describeRecipe(pipeline.recipe, runDir).join('\n'));
      } else
        console.log(
          JSON.stringify(pipeline.kind === 'recipe' ? pipeline.recipe : pipeline.topology, null, 2),
        );
    });
}
