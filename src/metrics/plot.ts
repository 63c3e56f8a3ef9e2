/**
 * Static plots of runs' metrics: one panel per metric against the step, several runs overlaid (colour by
 * run, one legend). Drawn with Vega-Lite and rendered to SVG headlessly (no canvas, no browser); PNG is the
 * SVG rasterised by resvg (a prebuilt binary that comes as an npm package).
 */
import { basename, dirname, relative, resolve } from 'node:path';
import { lastValueFrom, toArray } from 'rxjs';
import type * as ResvgModule from '@resvg/resvg-js';
import type { Metric } from '../../schemas/index.ts';
import { readMetricsJsonl, type ReadMetricsOptions } from './streams.ts';

/** The standard panels, in order; those no run has are left out. */
export const STANDARD_PANELS = [
  'reward/mean',
  'reward/accuracy',
  'eval/pass@1',
  'completions/mean_length',
  'train/kl',
  'staleness/mean',
] as const;

export interface RunMetrics {
  /** The name in the legend. */
  label: string;
  metrics: readonly Metric[];
}

export interface PlotOptions {
  /** Metric names to draw, one panel each (default {@link STANDARD_PANELS}). */
  panels?: readonly string[];
  /** Panels per row (default 2). */
  columns?: number;
  /** Size of one panel in pixels (default 360 x 200). */
  width?: number;
  height?: number;
  title?: string;
}

export interface PlotRow {
  run: string;
  metric: string;
  step: number;
  value: number;
}

/** The per-step values to plot: the last value of each (run, metric, step) of the panels' metrics. */
export function plotRows(runs: readonly RunMetrics[], panels: readonly string[]): PlotRow[] {
  const wanted = new Set(panels);
  const rows = new Map<string, PlotRow>();
  for (const run of runs) {
    for (const m of run.metrics) {
      if (m.kind !== 'value' || m.step === undefined || !wanted.has(m.name)) continue;
      rows.set(JSON.stringify([run.label, m.name, m.step]), {
        run: run.label,
        metric: m.name,
        step: m.step,
        value: m.value,
      });
    }
  }
  return [...rows.values()].sort((a, b) => a.step - b.step);
}

/** The Vega-Lite spec of the plot, or undefined when none of the panels' metrics has a value. */
export function plotSpec(
  runs: readonly RunMetrics[],
  options: PlotOptions = {},
): Record<string, unknown> | undefined {
  const requested = options.panels ?? STANDARD_PANELS;
  const rows = plotRows(runs, requested);
  const present = new Set(rows.map((r) => r.metric));
  const panels = requested.filter((p) => present.has(p));
  if (panels.length === 0) return undefined;
  const perSeries = Math.max(
    ...runs.map((r) => new Set(rows.filter((row) => row.run === r.label).map((row) => row.step)).size),
  );
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    ...(options.title ? { title: options.title } : {}),
    background: 'white',
    padding: 10,
    data: { values: rows },
    columns: Math.min(options.columns ?? 2, panels.length),
    facet: {
      field: 'metric',
      type: 'nominal',
      sort: panels,
      title: null,
      header: { labelFontSize: 13, labelFontWeight: 'bold' },
    },
    spec: {
      width: options.width ?? 360,
      height: options.height ?? 200,
      mark: { type: 'line', strokeWidth: 1.5, ...(perSeries <= 60 ? { point: { size: 16 } } : {}) },
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'step' },
        y: { field: 'value', type: 'quantitative', title: null, scale: { zero: false } },
        color: { field: 'run', type: 'nominal', title: 'run', sort: runs.map((r) => r.label) },
        tooltip: [{ field: 'run' }, { field: 'step' }, { field: 'value', format: '.4g' }],
      },
    },
    resolve: { scale: { y: 'independent', x: 'independent' }, axis: { x: 'independent' } },
    config: { font: 'sans-serif', view: { stroke: '#ddd' } },
  };
}

/** The little of Vega and Vega-Lite used here. */
interface VegaModules {
  vega: {
    parse(spec: unknown): unknown;
    View: new (
      runtime: unknown,
      options: { renderer: 'none' },
    ) => {
      toSVG(): Promise<string>;
      finalize(): void;
    };
  };
  vegaLite: { compile(spec: unknown): { spec: unknown } };
}

// Imported by a name in a variable: TypeScript then leaves their (large) type declarations unread, which
// keeps type-checking the project fast; the interface above is checked by the tests instead.
const importByName = (name: string): Promise<unknown> => import(name);

/** The plot as an SVG document. */
export async function renderSvg(spec: Record<string, unknown>): Promise<string> {
  const [vega, vegaLite] = (await Promise.all([importByName('vega'), importByName('vega-lite')])) as [
    VegaModules['vega'],
    VegaModules['vegaLite'],
  ];
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** An SVG document rasterised to PNG at `scale` times its size. */
export async function svgToPng(svg: string, scale = 2): Promise<Buffer> {
  let resvg: typeof ResvgModule;
  try {
    resvg = await import('@resvg/resvg-js');
  } catch (error) {
    throw new Error(
      `PNG output needs @resvg/resvg-js with its prebuilt binary for ${process.platform}-${process.arch}, which is not installed (${(error as Error).message}); write an .svg file instead`,
      { cause: error },
    );
  }
  const rendered = new resvg.Resvg(svg, {
    fitTo: { mode: 'zoom', value: scale },
    background: 'white',
    font: { loadSystemFonts: true },
    logLevel: 'off',
  }).render();
  return rendered.asPng();
}

/**
 * The legend name of each file: its directory's name (runs/<name>/metrics.jsonl); where two files share
 * it, the `run` field of their metrics, and where that is shared too, the path.
 */
export function runLabels(files: readonly { path: string; metrics: readonly Metric[] }[]): string[] {
  const dirNames = files.map((f) => basename(dirname(resolve(f.path))));
  const runNames = files.map((f) => f.metrics[0]?.run ?? dirNames[files.indexOf(f)]!);
  const unique = (names: string[]) => new Set(names).size === names.length;
  if (unique(dirNames)) return dirNames;
  if (unique(runNames)) return runNames;
  return files.map((f) => relative(process.cwd(), resolve(f.path)) || f.path);
}

/** Reads metrics.jsonl files (bad lines are reported and skipped) and names each run. */
export async function loadRuns(
  paths: readonly string[],
  options: ReadMetricsOptions = {},
): Promise<RunMetrics[]> {
  const files = await Promise.all(
    paths.map(async (path) => ({
      path,
      metrics: await lastValueFrom(readMetricsJsonl(path, options).pipe(toArray())),
    })),
  );
  const labels = runLabels(files);
  return files.map((f, i) => ({ label: labels[i]!, metrics: f.metrics }));
}
