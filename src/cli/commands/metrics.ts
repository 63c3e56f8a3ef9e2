/**
 * Watching and plotting a run's metrics: `rxrl metrics <source>` prints them (a table of the latest values,
 * one line per step, or JSON lines) from a running process, a metrics.jsonl file or a Kafka topic;
 * `rxrl plot <metrics.jsonl...>` draws the standard curves of one or more runs to an SVG or PNG file.
 */
import { existsSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname, extname, join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { tap, type Observable } from 'rxjs';
import type { Metric } from '../../../schemas/index.ts';
import { loadRuns, plotSpec, renderSvg, STANDARD_PANELS, svgToPng } from '../../metrics/plot.ts';
import { createMetricsServer, type MetricsServer } from '../../metrics/server.ts';
import { metricsFromKafka, metricsFromServer } from '../../metrics/sources.ts';
import {
  followMetricsJsonl,
  metricsOf,
  readMetricsJsonl,
  warnInvalid,
  type MetricFilter,
} from '../../metrics/streams.ts';
import { LatestTable, StepLines } from '../../metrics/table.ts';
import {
  collect,
  connectionOf,
  portNumber,
  positiveInt,
  withConnection,
  type ConnectionFlags,
} from '../options.ts';

interface MetricsFlags extends ConnectionFlags {
  follow?: boolean;
  name?: string[];
  run?: string;
  format?: 'table' | 'steps' | 'jsonl';
  topic?: string;
  interval: number;
}

const FORMATS = ['table', 'steps', 'jsonl'] as const;

/**
 * A run's metrics file as given: a metrics.jsonl file, or a run directory, for its metrics.jsonl. A
 * directory without one is a usage error that says so (reading it would fail with EISDIR).
 */
function metricsFile(path: string, command: Command): string {
  if (!existsSync(path) || !statSync(path).isDirectory()) return path;
  const inside = join(path, 'metrics.jsonl');
  if (!existsSync(inside)) command.error(`${path} is a directory with no metrics.jsonl in it`);
  return inside;
}

/** Adds `metrics` and `plot` to the program. */
export function registerMetricsCommands(program: Command): void {
  const metrics = program
    .command('metrics')
    .description(
      "Print a run's metrics: from a running process (its --dashboard/--metrics-port address), a metrics.jsonl file, or a Kafka topic (--topic <run>.metrics)",
    )
    .argument('[source]', 'http://host:port of a running rxrl, or a metrics.jsonl file')
    .option('-f, --follow', 'keep printing as new metrics come (Ctrl-C to stop)')
    .option('--name <prefix>', 'only metrics whose name starts with this (repeatable)', collect)
    .option('--run <run>', 'only the metrics of this run')
    .addOption(
      new Option(
        '--format <format>',
        'table: latest value of each metric (redrawn while following on a terminal); steps: one line per step; jsonl: each metric as JSON (default: table, or steps when following into a pipe)',
      ).choices(FORMATS),
    )
    .option('--interval <ms>', 'with --follow: redraw the table at most this often', positiveInt, 500)
    .option('--topic <topic>', "read the run's Kafka topic <run>.metrics instead of a source");
  withConnection(metrics).action(
    async (source: string | undefined, flags: MetricsFlags, command: Command) => {
      const filter: MetricFilter = {
        ...(flags.name ? { name: flags.name } : {}),
        ...(flags.run ? { run: flags.run } : {}),
      };
      const follow = flags.follow === true;
      const out = (text: string) => process.stdout.write(`${text}\n`);
      let metrics: Observable<Metric>;
      let closed: () => Promise<void> = async () => undefined;
      // Lines of a file read once: a file none of whose lines is a metric is an error, not an empty table.
      const lines = { valid: 0, invalid: 0 };
      if (flags.topic !== undefined) {
        if (source !== undefined) command.error('Give either a source or --topic, not both');
        const kafka = metricsFromKafka({
          connection: connectionOf(flags, command),
          topic: flags.topic,
          follow,
        });
        metrics = metricsOf(kafka, filter);
        closed = () => kafka.closed();
      } else if (source === undefined) {
        command.error('Give a source (http://host:port or a metrics.jsonl file) or --topic <run>.metrics');
      } else if (/^https?:\/\//.test(source)) {
        metrics = metricsFromServer(source, {
          follow,
          filter,
          onReset: () => startedOver(source),
          onReconnect: (reason, attempt, wait) =>
            process.stderr.write(
              `${reason}; reconnecting in ${(wait / 1000).toFixed(1)} s (attempt ${attempt})\n`,
            ),
        });
      } else {
        const file = metricsFile(source, command);
        if (!follow && !existsSync(file)) command.error(`No such file: ${file}`);
        if (!existsSync(file)) process.stderr.write(`waiting for ${file} to appear (Ctrl-C to stop)\n`);
        const read = follow
          ? followMetricsJsonl(file, { onRestart: () => startedOver(file) })
          : readMetricsJsonl(file, {
              onInvalid: (invalid) => {
                lines.invalid++;
                warnInvalid(invalid);
              },
            }).pipe(tap(() => lines.valid++));
        metrics = metricsOf(read, filter);
      }

      // A new run started where the followed one was: the views start over with it.
      function startedOver(what: string): void {
        table.reset();
        for (const line of steps.reset()) out(line);
        if (format === 'steps') out(`(${what} was started over)`);
      }
      const tty = process.stdout.isTTY === true;
      const format = flags.format ?? (follow && !tty ? 'steps' : 'table');
      const table = new LatestTable();
      const steps = new StepLines();
      let timer: NodeJS.Timeout | undefined;
      const draw = () => {
        timer = undefined;
        // Redrawn in place on a terminal; appended (one table per redraw) otherwise.
        out(`${tty ? '\x1b[H\x1b[2J' : ''}${table.render()}`);
      };

      await new Promise<void>((resolve, reject) => {
        const subscription = metrics.subscribe({
          next: (m) => {
            if (format === 'jsonl') out(JSON.stringify(m));
            else if (format === 'steps') for (const line of steps.update(m)) out(line);
            else {
              table.update(m);
              if (follow && timer === undefined) timer = setTimeout(draw, flags.interval);
            }
          },
          error: reject,
          complete: resolve,
        });
        const stop = () => {
          subscription.unsubscribe();
          resolve();
        };
        process.once('SIGINT', stop);
        subscription.add(() => process.off('SIGINT', stop));
      });
      clearTimeout(timer);
      if (lines.invalid > 0 && lines.valid === 0)
        command.error(
          `None of the ${lines.invalid} non-blank ${lines.invalid === 1 ? 'line' : 'lines'} of ${source} is a valid metric (reasons above)`,
        );
      if (format === 'steps') for (const line of steps.flush()) out(line);
      if (format === 'table') draw();
      await closed();
    },
  );

  program
    .command('dashboard')
    .description(
      "Serve the live dashboard (and /metrics, /metrics/stream) for a run's metrics.jsonl, followed as it grows: for a run started without --dashboard, or one that has ended",
    )
    .argument('<file>', "the run's metrics.jsonl")
    .option('--port <port>', 'port to listen on (0: a free one)', portNumber, 0)
    .option(
      '--host <host>',
      'address to listen on (on a loopback address it answers only requests for localhost: a guard against DNS rebinding)',
      '127.0.0.1',
    )
    .option(
      '--allowed-host <name>',
      'a Host name to answer besides localhost when listening on a loopback address (a reverse proxy that keeps Host, /etc/hosts); repeatable',
      collect,
    )
    .action(
      async (
        given: string,
        flags: { port: number; host: string; allowedHost?: string[] },
        command: Command,
      ) => {
        const file = metricsFile(given, command);
        if (!existsSync(file))
          process.stderr.write(`${file} does not exist yet: the dashboard fills in once it does\n`);
        // A new run started in the same directory: the dashboard starts over with it.
        const server: MetricsServer = createMetricsServer(
          followMetricsJsonl(file, { onRestart: () => server.reset() }),
          undefined,
          { allowedHosts: flags.allowedHost ?? [] },
        );
        const { url } = await server.listen(flags.port, flags.host);
        process.stdout.write(`dashboard of ${file}: ${url}/  (Ctrl-C to stop)\n`);
        await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
        await server.close();
      },
    );

  program
    .command('plot')
    .description(
      'Draw the standard curves (reward, accuracy, pass@1, response length, KL, staleness) of one or more runs against the step, one panel each, runs overlaid',
    )
    .argument(
      '<files...>',
      "runs' metrics.jsonl files or run directories (each run is named after its directory)",
    )
    .requiredOption(
      '-o, --out <file>',
      'where to write the plot (required): .svg, or .png (rendered with resvg)',
    )
    .option(
      '--metric <name>',
      `a metric to draw (repeatable; default: ${STANDARD_PANELS.join(', ')})`,
      collect,
    )
    .option('--columns <n>', 'panels per row', positiveInt, 2)
    .option('--title <title>', 'title above the panels')
    .action(
      async (
        files: string[],
        flags: { out: string; metric?: string[]; columns: number; title?: string },
        command: Command,
      ) => {
        const format = extname(flags.out).toLowerCase();
        if (format !== '.svg' && format !== '.png') {
          command.error(`--out must end in .svg or .png, got ${flags.out}`);
        }
        if (!existsSync(dirname(resolve(flags.out))))
          command.error(`--out ${flags.out}: no such directory ${dirname(flags.out)}`);
        files = files.map((file) => metricsFile(file, command));
        for (const file of files) if (!existsSync(file)) command.error(`No such file: ${file}`);
        const runs = await loadRuns(files);
        const spec = plotSpec(runs, {
          columns: flags.columns,
          ...(flags.metric ? { panels: flags.metric } : {}),
          ...(flags.title ? { title: flags.title } : {}),
        });
        if (!spec) {
          command.error(
            `None of ${files.join(', ')} has per-step values of ${(flags.metric ?? STANDARD_PANELS).join(', ')}`,
          );
        }
        const svg = await renderSvg(spec);
        await writeFile(flags.out, format === '.svg' ? svg : await svgToPng(svg));
        const panels = (spec.facet as { sort: string[] }).sort;
        const absent = (flags.metric ?? []).filter((name) => !panels.includes(name));
        if (absent.length > 0)
          process.stderr.write(`left out, as no run has per-step values of them: ${absent.join(', ')}\n`);
        process.stdout.write(
          `wrote ${flags.out}: ${panels.join(', ')} for ${runs.map((r) => r.label).join(', ')}\n`,
        );
      },
    );
}
