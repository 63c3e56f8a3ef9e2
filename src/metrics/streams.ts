/**
 * Metrics as Observables for code that subscribes to them: filtering a stream by name and run, reading a
 * run's metrics.jsonl (once, or following it as the run appends), each line validated with the Metric schema.
 */
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { Observable } from 'rxjs';
import { filter } from 'rxjs/operators';
import type { Metric } from '../../schemas/index.ts';
import { validateMessage } from '../validation.ts';

export interface MetricFilter {
  /** A name prefix ("reward/" or "reward/mean": an exact name is its own prefix) or a pattern. */
  name?: string | RegExp | readonly (string | RegExp)[];
  /** Only the metrics of this run. */
  run?: string;
}

/** Whether a metric passes a filter; undefined fields pass everything. */
export function metricMatches(metric: Metric, { name, run }: MetricFilter): boolean {
  if (run !== undefined && metric.run !== run) return false;
  if (name === undefined) return true;
  const patterns = Array.isArray(name) ? name : [name as string | RegExp];
  if (patterns.length === 0) return true;
  return patterns.some((p) => (typeof p === 'string' ? metric.name.startsWith(p) : p.test(metric.name)));
}

/**
 * The metrics of `source` that pass the filter.
 *
 * ```
 * source:                 --reward/mean--kl--reward/std--
 * metricsOf(s, {name: 'reward/'}): --reward/mean------reward/std--
 * ```
 */
export function metricsOf(source: Observable<Metric>, options: MetricFilter = {}): Observable<Metric> {
  return source.pipe(filter((m) => metricMatches(m, options)));
}

/** A line of a metrics file that is not a valid Metric. */
export interface InvalidMetricLine {
  path: string;
  /** 1-based. */
  line: number;
  reason: string;
}

export interface ReadMetricsOptions {
  /**
   * Called for each line that is not a valid Metric (the stream goes on without it). Default: a warning on
   * stderr naming the file and line.
   */
  onInvalid?: (invalid: InvalidMetricLine) => void;
}

export interface FollowMetricsOptions extends ReadMetricsOptions {
  /** How often the file is checked for new lines, in ms (default 250). */
  pollMs?: number;
  /** Called when the file was started over (it shrank: a new run in the same directory), before its lines. */
  onRestart?: () => void;
}

/** The default report of an invalid line: `path:line: reason` on stderr. */
export function warnInvalid({ path, line, reason }: InvalidMetricLine): void {
  console.warn(`${path}:${line}: ${reason}`);
}

/** The Metric on one line of JSONL, or why it is not one. */
export function parseMetricLine(text: string): { ok: true; metric: Metric } | { ok: false; reason: string } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    return { ok: false, reason: `not valid JSON: ${(error as Error).message}` };
  }
  const checked = validateMessage('Metric', json);
  return checked.ok ? { ok: true, metric: checked.value } : { ok: false, reason: checked.error.message };
}

/**
 * Names that runs wrote before they took TRL's current ones (TRL renamed them too, in 0.17): a file of an
 * older run is read under the new names, so `rxrl plot` and the dashboard compare old runs with new.
 */
export const RENAMED_METRICS: Readonly<Record<string, string>> = {
  'completion_length/mean': 'completions/mean_length',
  'completion_length/min': 'completions/min_length',
  'completion_length/max': 'completions/max_length',
  'completion_length/clipped_ratio': 'completions/clipped_ratio',
};

/** Parses lines as they come, counting them, skipping blank ones and reporting invalid ones. */
function lineHandler(
  path: string,
  onInvalid: (invalid: InvalidMetricLine) => void,
  emit: (metric: Metric) => void,
): (text: string) => void {
  let line = 0;
  return (text) => {
    line++;
    if (text.trim() === '') return;
    const parsed = parseMetricLine(text);
    if (!parsed.ok) return onInvalid({ path, line, reason: parsed.reason });
    const renamed = RENAMED_METRICS[parsed.metric.name];
    emit(renamed ? { ...parsed.metric, name: renamed } : parsed.metric);
  };
}

/**
 * The metrics in a JSONL file (one Metric per line, as a run writes `metrics.jsonl`), then complete. A line
 * that is not a valid Metric is reported (with its line number) and skipped; a file that cannot be read is an
 * error.
 */
export function readMetricsJsonl(path: string, options: ReadMetricsOptions = {}): Observable<Metric> {
  return new Observable<Metric>((subscriber) => {
    const input = createReadStream(path, { encoding: 'utf8' });
    const lines = createInterface({ input, crlfDelay: Infinity });
    const handle = lineHandler(path, options.onInvalid ?? warnInvalid, (m) => subscriber.next(m));
    // readline still hands over the rest of the chunk it holds after close(): nothing once unsubscribed.
    lines.on('line', (text: string) => {
      if (!subscriber.closed) handle(text);
    });
    lines.on('close', () => subscriber.complete());
    // readline passes the input's errors (a missing file) on as its own.
    lines.on('error', (error) => subscriber.error(error));
    input.on('error', (error) => subscriber.error(error));
    return () => {
      lines.close();
      input.destroy();
    };
  });
}

/**
 * The metrics in a JSONL file, and then those appended to it, like `tail -f`: never completes by itself.
 * A file that does not exist yet is waited for; one that shrinks (a run started over in the same directory)
 * is read again from its start. A partial last line waits for the rest of it.
 */
export function followMetricsJsonl(path: string, options: FollowMetricsOptions = {}): Observable<Metric> {
  const pollMs = options.pollMs ?? 250;
  const onInvalid = options.onInvalid ?? warnInvalid;
  return new Observable<Metric>((subscriber) => {
    let offset = 0;
    let partial = '';
    let handle = lineHandler(path, onInvalid, (m) => subscriber.next(m));
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let decoder = new TextDecoder('utf-8');

    let inode: number | undefined;
    const readNew = async (): Promise<void> => {
      let size: number;
      let ino: number;
      try {
        ({ size, ino } = await stat(path));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return; // not there yet
        throw error;
      }
      const replaced = inode !== undefined && ino !== inode;
      inode = ino;
      if (size < offset || replaced) {
        // Truncated, or another file in its place: the file was started over.
        offset = 0;
        partial = '';
        decoder = new TextDecoder('utf-8');
        handle = lineHandler(path, onInvalid, (m) => subscriber.next(m));
        options.onRestart?.();
      }
      if (size === offset) return;
      const file = await open(path, 'r');
      try {
        const chunk = Buffer.alloc(Math.min(size - offset, 4 * 1024 * 1024));
        while (offset < size && !stopped) {
          const { bytesRead } = await file.read(chunk, 0, Math.min(chunk.length, size - offset), offset);
          if (bytesRead === 0) break;
          offset += bytesRead;
          const text = partial + decoder.decode(chunk.subarray(0, bytesRead), { stream: true });
          const lines = text.split('\n');
          partial = lines.pop() ?? '';
          for (const line of lines) {
            if (stopped) return;
            handle(line.endsWith('\r') ? line.slice(0, -1) : line);
          }
        }
      } finally {
        await file.close();
      }
    };

    const poll = () => {
      readNew().then(
        () => {
          if (!stopped) timer = setTimeout(poll, pollMs);
        },
        (error: unknown) => subscriber.error(error),
      );
    };
    poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  });
}
