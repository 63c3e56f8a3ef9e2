import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { Subject } from 'rxjs';
import type { ScoredRollout } from '../../../schemas/index.ts';
import { Metrics } from '../../metrics/metrics.ts';
import { createMetricsServer, type MetricsServer } from '../../metrics/server.ts';
import type { BackendRequest } from '../../policy/backend.ts';
import type { RunEvent, RunSummary } from '../../run/r1zero.ts';
import { nonNegativeInt, portNumber, positiveInt } from '../options.ts';
import { defaultRunDir, loadPipeline } from '../pipelines.ts';

const fmt = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : '-');

function progressDisplay() {
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
    on(event: RunEvent) {
      switch (event.kind) {
        case 'pretrain':
          if (event.step === 1 || event.step % 100 === 0 || event.step === event.total) {
            console.log(`pretrain: step ${event.step}/${event.total} loss ${fmt(event.loss, 3)}`);
          }
          break;
        case 'base-model':
          console.log(`base model: ${event.cached ? 'reused from' : 'saved to'} ${event.dir}`);
          break;
        case 'backend':
          console.log(
            `backend: generator ${event.generator}, learner ${event.learner} (one worker thread each)`,
          );
          break;
        case 'eval': {
          const r = event.result;
          const line = `eval @ step ${event.step}: pass@1 ${fmt(r.pass1, 3)}  cons@${r.samplesPerQuestion} ${fmt(r.consAtK, 3)}  format ${fmt(r.formatRate)}  length ${fmt(r.meanLength, 1)}`;
          // On a terminal the bar redraws itself below the line.
          console.log(started ? `\n${line}` : line);
          break;
        }
        case 'step': {
          const payload = {
            reward: fmt(event.rollout.rewardMean),
            acc: fmt(event.rollout.accuracy),
            len: fmt(event.rollout.lengthMean, 1),
            kl: fmt(event.report.kl, 4),
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
  opts: { dashboard?: number | true; metricsPort?: number; metricsHost: string },
): Promise<MetricsServer | undefined> {
  if (opts.dashboard === undefined && opts.metricsPort === undefined) return undefined;
  const dashboardPort = typeof opts.dashboard === 'number' ? opts.dashboard : undefined;
  if (dashboardPort !== undefined && opts.metricsPort !== undefined && dashboardPort !== opts.metricsPort) {
    throw new Error('--dashboard and --metrics-port name one server: give the port once');
  }
  const server = createMetricsServer(metrics.stream, completions);
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

export function registerRunCommand(program: Command): void {
  program
    .command('run')
    .description('Run a pipeline (a topology in pipelines/) on the embedded in-memory transport')
    .argument('<pipeline>', 'pipeline name (pipelines/<name>.ts) or path to a topology module')
    .option('--backend <backend>', 'auto | tensorflow-gpu | tensorflow | wasm | cpu', 'auto')
    .option(
      '--run-dir <dir>',
      'where metrics.jsonl, checkpoints and summary.json go (default runs/<pipeline>)',
    )
    .option('--cache-dir <dir>', 'where base models are cached', '.cache/base-models')
    .option('--resume', 'continue from the last checkpoint in the run directory')
    .option('--steps <n>', 'override the number of optimiser steps', positiveInt)
    .option('--eta <n>', 'override the staleness bound (0: synchronous)', nonNegativeInt)
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
    .option('--metrics-host <host>', 'address the metrics server listens on', '127.0.0.1')
    .action(
      async (
        name: string,
        opts: {
          backend: BackendRequest;
          runDir?: string;
          cacheDir: string;
          resume?: boolean;
          steps?: number;
          eta?: number;
          dashboard?: number | true;
          metricsPort?: number;
          metricsHost: string;
        },
      ) => {
        const topology = await loadPipeline(name);
        console.log(`${topology.name}: ${topology.description}`);
        const metrics = new Metrics({ run: topology.name });
        const completions = new Subject<ScoredRollout>();
        const server = await serveMetrics(metrics, completions, opts);
        const display = progressDisplay();
        try {
          const summary = await (
            await import('../../run/r1zero.ts')
          ).runR1Zero({
            metrics,
            ...(server ? { onCompletion: (s: ScoredRollout) => completions.next(s) } : {}),
            topology,
            backend: opts.backend,
            runDir: opts.runDir ?? defaultRunDir(topology.name),
            cacheDir: opts.cacheDir,
            ...(opts.resume ? { resume: true } : {}),
            ...(opts.steps !== undefined ? { steps: opts.steps } : {}),
            ...(opts.eta !== undefined ? { eta: opts.eta } : {}),
            onEvent: (e) => display.on(e),
          });
          display.stop();
          printSummary(summary);
        } finally {
          display.stop();
          completions.complete();
          await server?.close();
        }
      },
    );

  program
    .command('describe')
    .description('Print a pipeline declaration without running it')
    .argument('<pipeline>', 'pipeline name or path')
    .action(async (name: string) => {
      console.log(JSON.stringify(await loadPipeline(name), null, 2));
    });
}
