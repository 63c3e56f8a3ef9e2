/**
 * A run's metrics in the Prometheus text exposition format, through prom-client with a registry of its own
 * (the process-wide default registry is left alone).
 *
 * - counters stay counters, named `<prefix>_<name>_total`, their labels kept;
 * - gauges are gauges, named `<prefix>_<name>`;
 * - per-step values (kind "value": reward/mean, train/kl, ...) are gauges of their latest value.
 *
 * Every series also carries the run as label `run`. Names follow Prometheus' rules: each run of characters
 * other than letters, digits and `_` becomes one `_` (`reward/mean` is `rxrl_reward_mean`, `eval/pass@1` is
 * `rxrl_eval_pass_1`, `samples.generated` is `rxrl_samples_generated_total`).
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { Observable, Subscription } from 'rxjs';
import type { Metric } from '../../schemas/index.ts';

/** `reward/mean` -> `reward_mean`: a legal Prometheus metric name (without prefix). */
export function sanitizeMetricName(name: string): string {
  const s = name.replace(/[^a-zA-Z0-9_]+/g, '_').replace(/_+/g, '_');
  return /^[0-9]/.test(s) ? `_${s}` : s;
}

/** A legal Prometheus label name (letters, digits, `_`; not starting with a digit or `__`). */
export function sanitizeLabelName(name: string): string {
  const s = name.replace(/[^a-zA-Z0-9_]+/g, '_').replace(/^_+/, '');
  if (s === '') return 'label';
  return /^[0-9]/.test(s) ? `_${s}` : s;
}

/** The exposed name of a metric: `rxrl_reward_mean`, `rxrl_samples_generated_total`. */
export function prometheusName(name: string, kind: Metric['kind'], prefix = 'rxrl'): string {
  const base = `${prefix ? `${sanitizeMetricName(prefix)}_` : ''}${sanitizeMetricName(name)}`.replace(
    /_+/g,
    '_',
  );
  return kind === 'counter' && !base.endsWith('_total') ? `${base}_total` : base;
}

interface Series {
  labels: Record<string, string>;
  value: number;
}

interface Family {
  kind: 'counter' | 'gauge';
  /** The metric name (as published) this family exports; another that maps to its name is refused. */
  source: string;
  labelNames: string[];
  series: Map<string, Series>;
  metric: Counter | Gauge;
}

const HELP: Record<Metric['kind'], string> = {
  counter: 'counter',
  gauge: 'gauge',
  value: 'latest per-step value',
};

export interface PrometheusExporterOptions {
  /** Prepended to every name (default "rxrl"). */
  prefix?: string;
}

/**
 * Keeps the latest value of every metric series it is given in a prom-client Registry. Feed it with
 * `update(metric)` or `subscribe(stream)`; `metrics()` is the text a scrape gets.
 */
export class PrometheusExporter {
  readonly registry = new Registry();
  private readonly families = new Map<string, Family>();
  private readonly prefix: string;
  private readonly conflicts = new Set<string>();

  constructor(options: PrometheusExporterOptions = {}) {
    this.prefix = options.prefix ?? 'rxrl';
  }

  /** Forgets every series (their run started over). */
  clear(): void {
    this.registry.clear();
    this.families.clear();
    this.conflicts.clear();
  }

  subscribe(stream: Observable<Metric>): Subscription {
    return stream.subscribe((m) => this.update(m));
  }

  update(m: Metric): void {
    const kind = m.kind === 'counter' ? 'counter' : 'gauge';
    const name = prometheusName(m.name, m.kind, this.prefix);
    const labels: Record<string, string> = { run: m.run };
    for (const [k, v] of Object.entries(m.labels ?? {})) labels[sanitizeLabelName(k)] = v;
    let family = this.families.get(name);
    if (family && (family.kind !== kind || family.source !== m.name)) {
      // Two metrics whose names map to one Prometheus name (a gauge "x_total" next to a counter "x";
      // rewards "a.b" and "a_b"): the first one keeps the name, rather than the two overwriting each other.
      if (!this.conflicts.has(m.name)) {
        this.conflicts.add(m.name);
        console.warn(
          `metrics: ${m.kind} ${m.name} is not exported: ${name} is already ${family.kind} ${family.source}`,
        );
      }
      return;
    }
    if (!family) {
      family = {
        kind,
        source: m.name,
        labelNames: [],
        series: new Map(),
        metric: undefined as unknown as Counter,
      };
      this.families.set(name, family);
      this.build(name, family, Object.keys(labels), m.kind);
    } else {
      const missing = Object.keys(labels).filter((k) => !family!.labelNames.includes(k));
      if (missing.length > 0) this.build(name, family, [...family.labelNames, ...missing], m.kind);
    }
    const key = JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    family.series.set(key, { labels, value: m.value });
  }

  /** The text exposition of every series. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** (Re)creates the prom-client metric of a family with these label names; it reads the series when scraped. */
  private build(name: string, family: Family, labelNames: string[], kind: Metric['kind']): void {
    if (this.registry.getSingleMetric(name)) this.registry.removeSingleMetric(name);
    family.labelNames = labelNames;
    const help = `rxrl ${HELP[kind]}: ${family.source}`;
    const series = family.series;
    family.metric =
      family.kind === 'counter'
        ? new Counter({
            name,
            help,
            labelNames,
            registers: [this.registry],
            collect() {
              this.reset();
              for (const s of series.values()) if (s.value >= 0) this.inc(s.labels, s.value);
            },
          })
        : new Gauge({
            name,
            help,
            labelNames,
            registers: [this.registry],
            collect() {
              this.reset();
              for (const s of series.values()) this.set(s.labels, s.value);
            },
          });
  }
}
