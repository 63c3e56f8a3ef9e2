import { Subject, asyncScheduler, type Observable, type SchedulerLike } from 'rxjs';
import { filter } from 'rxjs/operators';
import { SCHEMA_VERSION, type Metric } from '../../schemas/index.ts';

type Labels = Record<string, string>;

/** A cumulative count. Incrementing is a field write: cheap enough for the per-sample hot path. */
export class Counter {
  value = 0;
  constructor(
    readonly name: string,
    readonly labels?: Labels,
  ) {}
  inc(by = 1): void {
    this.value += by;
  }
}

/** A value that goes up and down (open groups, capacity, current version). */
export class Gauge {
  value = 0;
  constructor(
    readonly name: string,
    readonly labels?: Labels,
  ) {}
  set(value: number): void {
    this.value = value;
  }
}

export interface MetricsOptions {
  run: string;
  /** Scheduler whose clock stamps the metrics (a TestScheduler in marble tests). */
  scheduler?: SchedulerLike;
}

export function metricKey(name: string, labels?: Labels): string {
  return labels ? `${name}{${Object.entries(labels).map(([k, v]) => `${k}=${v}`)}}` : name;
}

/**
 * The typed metrics stream of one run. Stages register counters and gauges (held in memory, so the hot
 * path never allocates) and record per-step values; `flush()` publishes every counter and gauge on the
 * stream. The owner of the run flushes on a timer and at the end.
 */
export class Metrics {
  readonly run: string;
  private readonly scheduler: SchedulerLike;
  private readonly subject = new Subject<Metric>();
  private readonly counters = new Map<string, Counter>();
  private readonly gauges = new Map<string, Gauge>();

  constructor(options: MetricsOptions) {
    this.run = options.run;
    this.scheduler = options.scheduler ?? asyncScheduler;
  }

  /** Every metric of the run as it is published. */
  get stream(): Observable<Metric> {
    return this.subject.asObservable();
  }

  /** The metrics whose name starts with `prefix` (e.g. "reward/" or "drops."). */
  select(prefix: string): Observable<Metric> {
    return this.stream.pipe(filter((m) => m.name.startsWith(prefix)));
  }

  counter(name: string, labels?: Labels): Counter {
    const k = metricKey(name, labels);
    let c = this.counters.get(k);
    if (!c) {
      c = new Counter(name, labels);
      this.counters.set(k, c);
    }
    return c;
  }

  gauge(name: string, labels?: Labels): Gauge {
    const k = metricKey(name, labels);
    let g = this.gauges.get(k);
    if (!g) {
      g = new Gauge(name, labels);
      this.gauges.set(k, g);
    }
    return g;
  }

  /** Publish one observation now (per-step values: loss, reward mean, KL...). */
  record(name: string, value: number, step?: number, labels?: Labels): void {
    this.publish(name, 'value', value, step, labels);
  }

  /** Publish the current value of every counter and gauge. */
  flush(step?: number): void {
    for (const c of this.counters.values()) this.publish(c.name, 'counter', c.value, step, c.labels);
    for (const g of this.gauges.values()) this.publish(g.name, 'gauge', g.value, step, g.labels);
  }

  /** Every counter registered, with its labels and value (to save with a checkpoint). */
  counterValues(): { name: string; labels?: Labels; value: number }[] {
    return [...this.counters.values()].map((c) => ({
      name: c.name,
      ...(c.labels ? { labels: c.labels } : {}),
      value: c.value,
    }));
  }

  /** Current counter and gauge values by name (labels folded into the key), for summaries and tests. */
  snapshot(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, c] of this.counters) out[k] = c.value;
    for (const [k, g] of this.gauges) out[k] = g.value;
    return out;
  }

  complete(): void {
    this.subject.complete();
  }

  private publish(name: string, kind: Metric['kind'], value: number, step?: number, labels?: Labels): void {
    // JSON (and so Kafka and the JSONL log) has no NaN: an undefined statistic is simply not published.
    if (!this.subject.observed || !Number.isFinite(value)) return;
    this.subject.next({
      schemaVersion: SCHEMA_VERSION,
      run: this.run,
      time: this.scheduler.now(),
      name,
      kind,
      value,
      ...(step !== undefined ? { step } : {}),
      ...(labels ? { labels } : {}),
    });
  }
}

/** A private registry for operators used without one, so counting code has no branches. */
export function detachedMetrics(): Metrics {
  return new Metrics({ run: 'detached' });
}
