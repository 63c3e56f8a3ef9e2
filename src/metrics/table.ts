/**
 * Text views of a metrics stream for a terminal: a table of the latest value of each metric (re-rendered as
 * values come), or one line per step.
 */
import type { Metric } from '../../schemas/index.ts';

/** `name{k=v,...}`: one row per series. */
export function seriesKey(m: Pick<Metric, 'name' | 'labels'>): string {
  if (!m.labels || Object.keys(m.labels).length === 0) return m.name;
  return `${m.name}{${Object.entries(m.labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(',')}}`;
}

/** Integers as they are, other values to 5 significant digits. */
export function formatValue(value: number): string {
  if (Number.isInteger(value)) return String(value);
  return String(Number(value.toPrecision(5)));
}

function formatTable(rows: string[][], rightAligned: readonly number[] = []): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  return rows.map((row) =>
    row
      .map((cell, c) => (rightAligned.includes(c) ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!)))
      .join('  ')
      .trimEnd(),
  );
}

/**
 * Whether `m` starts the run over from `current`: a training step below the current one (a resumed run
 * repeating the steps after its checkpoint). An evaluation may come late (`eval/*` of an earlier step).
 */
export function stepsWentBack(m: Metric, current: number | undefined): boolean {
  return m.step !== undefined && current !== undefined && m.step < current && !m.name.startsWith('eval/');
}

/** The latest value of each series, sorted by name. */
export class LatestTable {
  private readonly latest = new Map<string, Metric>();
  private count = 0;
  private step: number | undefined;

  update(m: Metric): void {
    this.count++;
    this.latest.set(seriesKey(m), m);
    if (
      m.step !== undefined &&
      (this.step === undefined || m.step > this.step || stepsWentBack(m, this.step))
    )
      this.step = m.step;
  }

  /** Forgets everything (the file was started over by another run). */
  reset(): void {
    this.latest.clear();
    this.count = 0;
    this.step = undefined;
  }

  get size(): number {
    return this.latest.size;
  }

  /** The latest metric of a series (`name` or `name{k=v}`). */
  get(key: string): Metric | undefined {
    return this.latest.get(key);
  }

  /** A heading line and the table (metric, kind, step, value). */
  render(): string {
    const runs = [...new Set([...this.latest.values()].map((m) => m.run))].join(', ');
    const heading = `${runs || '(no metrics yet)'}: ${this.count} metrics${this.step !== undefined ? `, step ${this.step}` : ''}`;
    if (this.latest.size === 0) return heading;
    const rows = [...this.latest.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, m]) => [key, m.kind, m.step === undefined ? '' : String(m.step), formatValue(m.value)]);
    return [heading, '', ...formatTable([['metric', 'kind', 'step', 'value'], ...rows], [2, 3])].join('\n');
  }
}

/**
 * One line per step: `step 12  reward/mean 0.25  train/kl 0.0013 ...`, printed once the stream has moved on
 * to a later step (or on `flush()`). An evaluation of an earlier step than the current one (one that
 * finished late) gets a line of its own; a training metric of an earlier step starts the lines over from
 * there (a resumed run repeating the steps after its checkpoint); one without a step joins the current line.
 */
export class StepLines {
  private step: number | undefined;
  private pending: Metric[] = [];

  /** Lines that are complete now that `m` has come. */
  update(m: Metric): string[] {
    if (m.step === undefined || m.step === this.step || this.step === undefined) {
      if (this.step === undefined && m.step !== undefined) this.step = m.step;
      this.pending.push(m);
      return [];
    }
    if (m.step < this.step && !stepsWentBack(m, this.step)) return [StepLines.line(m.step, [m])];
    const out = this.flush();
    this.step = m.step;
    this.pending = [m];
    return out;
  }

  /** The line of the current step, if it has anything, and a fresh start (the file was started over). */
  reset(): string[] {
    const out = this.flush();
    this.step = undefined;
    return out;
  }

  /** The line of the current step, if it has anything. */
  flush(): string[] {
    if (this.pending.length === 0) return [];
    const line = StepLines.line(this.step, this.pending);
    this.pending = [];
    return [line];
  }

  private static line(step: number | undefined, metrics: readonly Metric[]): string {
    const latest = new Map<string, number>();
    for (const m of metrics) latest.set(seriesKey(m), m.value);
    const values = [...latest].map(([k, v]) => `${k} ${formatValue(v)}`).join('  ');
    return `${step === undefined ? 'no step' : `step ${step}`}  ${values}`;
  }
}
