import { spawn } from 'node:child_process';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Metric } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { svgToPng } from '../../src/metrics/plot.ts';
import { createMetricsServer, type MetricsServer } from '../../src/metrics/server.ts';
import { logToJsonl, publishStep, tempDir } from './helpers.ts';

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `node bin/rxrl.js ...args`, as a user runs it. */
function rxrl(...args: string[]): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/rxrl.js', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const dir = tempDir('rxrl-cli-');
const runA = join(dir, 'run-a', 'metrics.jsonl');
const runB = join(dir, 'run-b', 'metrics.jsonl');
const svgPath = join(dir, 'plot.svg');
let server: MetricsServer;
let served: Metric[];
// The CLI loads the whole engine (seconds): its runs go in parallel, once, and the tests read their results.
let results: {
  table: Result;
  steps: Result;
  url: Result;
  plot: Result;
  misspelt: Result;
  allBad: Result;
  noFile: Result;
};

beforeAll(async () => {
  mkdirSync(join(dir, 'run-a'));
  mkdirSync(join(dir, 'run-b'));
  const a = new Metrics({ run: 'arith' });
  let log = logToJsonl(a, runA);
  for (let step = 0; step < 6; step++) publishStep(a, step);
  a.record('eval/pass@1', 0.5, 5);
  appendFileSync(runA, 'not json\n');
  log.unsubscribe();
  const b = new Metrics({ run: 'arith' });
  log = logToJsonl(b, runB);
  for (let step = 0; step < 4; step++) publishStep(b, step);
  log.unsubscribe();

  const live = new Metrics({ run: 'live' });
  served = [];
  live.stream.subscribe((m) => served.push(m));
  server = createMetricsServer(live.stream);
  const { url } = await server.listen(0);
  for (let step = 0; step < 3; step++) publishStep(live, step);
  const allBad = join(dir, 'all-bad.jsonl');
  appendFileSync(allBad, 'not json\n\n{"name":"reward/mean"}\n');

  const [table, steps, fromUrl, plot, misspelt, bad, noFile] = await Promise.all([
    rxrl('metrics', runA),
    rxrl('metrics', runA, '--format', 'steps', '--name', 'reward/'),
    rxrl('metrics', url, '--name', 'train/', '--format', 'jsonl'),
    // A run directory stands for its metrics.jsonl.
    rxrl('plot', runA, dirname(runB), '--out', svgPath),
    rxrl('plot', runA, '--metric', 'eval/pass@1', '--metric', 'reward/meen', '--out', join(dir, 'one.svg')),
    rxrl('metrics', allBad),
    rxrl('metrics', dir),
  ]);
  results = { table, steps, url: fromUrl, plot, misspelt, allBad: bad, noFile };
}, 300_000);

afterAll(async () => {
  await server?.close();
});

describe('rxrl metrics', () => {
  it('prints the latest value of each metric of a metrics.jsonl, and names the bad line', () => {
    const { code, stdout, stderr } = results.table;
    expect(code, stderr).toBe(0);
    const lines = stdout.trimEnd().split('\n');
    expect(lines[0]).toBe('arith: 55 metrics, step 5');
    const row = (name: string) => lines.find((l) => l.startsWith(`${name} `))?.split(/\s+/);
    expect(row('reward/mean')).toEqual(['reward/mean', 'value', '5', '1.375']);
    expect(row('eval/pass@1')).toEqual(['eval/pass@1', 'value', '5', '0.5']);
    expect(row('samples.generated')).toEqual(['samples.generated', 'counter', '5', '96']);
    expect(row('drops.samples{reason=stale}')).toEqual(['drops.samples{reason=stale}', 'counter', '5', '3']);
    expect(row('groups.open')).toEqual(['groups.open', 'gauge', '5', '8']);
    expect(stderr).toContain(`${runA}:56: not valid JSON`);
  });

  it('fails on a file none of whose lines is a metric, naming each bad line, instead of printing an empty table', () => {
    const { code, stdout, stderr } = results.allBad;
    expect(code).toBe(1);
    expect(stdout).toBe('');
    const file = join(dir, 'all-bad.jsonl');
    expect(stderr).toContain(`${file}:1: not valid JSON`);
    expect(stderr).toContain(`${file}:3: Invalid Metric`);
    expect(stderr).toContain(
      `error: None of the 2 non-blank lines of ${file} is a valid metric (reasons above)`,
    );
  });

  it('prints one line per step, only the metrics named', () => {
    const { code, stdout, stderr } = results.steps;
    expect(code, stderr).toBe(0);
    expect(stdout.trimEnd().split('\n')).toEqual([
      'step 0  reward/mean 0.125  reward/accuracy 0',
      'step 1  reward/mean 0.375  reward/accuracy 0.2',
      'step 2  reward/mean 0.625  reward/accuracy 0.4',
      'step 3  reward/mean 0.875  reward/accuracy 0.6',
      'step 4  reward/mean 1.125  reward/accuracy 0.8',
      'step 5  reward/mean 1.375  reward/accuracy 1',
    ]);
  });

  it("reads a running process's metrics server", () => {
    const { code, stdout, stderr } = results.url;
    expect(code, stderr).toBe(0);
    const printed = stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Metric);
    expect(printed).toEqual(served.filter((m) => m.name.startsWith('train/')));
    expect(printed).toHaveLength(3);
  });
});

describe('rxrl plot', () => {
  it('names a directory with no metrics.jsonl in it, instead of failing to read it', () => {
    const { code, stderr } = results.noFile;
    expect(code).toBe(1);
    expect(stderr.trim()).toBe(`error: ${dir} is a directory with no metrics.jsonl in it`);
  });

  it('says which metrics asked for it left out, as no run has them', () => {
    const { code, stdout, stderr } = results.misspelt;
    expect(code, stderr).toBe(0);
    expect(stdout).toContain('eval/pass@1 for run-a');
    expect(stderr).toContain('left out, as no run has per-step values of them: reward/meen');
  });

  it('draws one panel per standard metric with a line per run, and a legend of the runs', () => {
    const { code, stdout, stderr } = results.plot;
    expect(code, stderr).toBe(0);
    expect(stdout).toContain(`wrote ${svgPath}`);
    const svg = readFileSync(svgPath, 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);

    const titles = [...svg.matchAll(/aria-label="Title text '([^']+)'"/g)].map((m) => m[1]);
    expect(titles).toEqual([
      'reward/mean',
      'reward/accuracy',
      'eval/pass@1',
      'completions/mean_length',
      'train/kl',
      'staleness/mean',
    ]);
    const legend = [...svg.matchAll(/class="mark-text role-legend-label"[^>]*><text[^>]*>([^<]+)</g)].map(
      (m) => m[1],
    );
    expect(legend).toEqual(['run-a', 'run-b']);
    // Each line: its run and first point (aria-label) and how many points it joins. run-a has steps 0-5,
    // run-b 0-3, and only run-a has an evaluation (at step 5).
    const lines = [
      ...svg.matchAll(
        /aria-label="step: (\d+); value: ([^;]+); run: ([^"]+)"[^>]* aria-roledescription="line mark" d="([^"]+)"/g,
      ),
    ].map((m) => ({
      run: m[3],
      step: Number(m[1]),
      value: Number(m[2]),
      points: m[4]!.split(/[ML]/).length - 1,
    }));
    expect(lines.map((l) => `${l.run}:${l.points}`)).toEqual([
      ...['run-a:6', 'run-b:4'],
      ...['run-a:6', 'run-b:4'],
      'run-a:1',
      ...['run-a:6', 'run-b:4', 'run-a:6', 'run-b:4', 'run-a:6', 'run-b:4'],
    ]);
    expect(lines[0]).toMatchObject({ step: 0, value: 0.125 });
    expect(lines[4]).toMatchObject({ step: 5, value: 0.5 });
    expect(lines[5]).toMatchObject({ step: 0, value: 40 });
  });

  it('rasterises the plot to PNG', async () => {
    const png = await svgToPng(readFileSync(svgPath, 'utf8'));
    expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
    // IHDR: twice the SVG's size.
    const width = readFileSync(svgPath, 'utf8').match(/^<svg[^>]* width="(\d+)"/)![1];
    expect(png.readUInt32BE(16)).toBe(2 * Number(width));
    expect(png.length).toBeGreaterThan(20_000);
  });
});
