/* global window, document, location, EventSource, ResizeObserver, uPlot */
// The live dashboard: charts and tables fed by the server's Server-Sent Events (/metrics/stream).
// Runs in the browser as is (no build step); uPlot is loaded before it by index.html.
'use strict';

(() => {
  /** Each chart: a title and the per-step metrics it draws. */
  const CHARTS = [
    { title: 'Reward', series: ['reward/mean', 'reward/format'] },
    { title: 'Accuracy', series: ['reward/accuracy', 'eval/pass@1'] },
    { title: 'Response length (tokens)', series: ['completions/mean_length', 'eval/completion_length'] },
    { title: 'KL', series: ['train/kl'] },
    { title: 'Staleness (versions)', series: ['staleness/mean'] },
    { title: 'Throughput (tokens/s)', series: ['rollout/tokens_per_second', 'train/tokens_per_second'] },
  ];
  const COLORS = ['#0969da', '#cf222e', '#1a7f37', '#8250df', '#bc4c00', '#6e7781'];
  const MAX_COMPLETIONS = 50;
  const REDRAW_MS = 200;

  /** name -> Map(step -> value) of per-step values. */
  const points = new Map();
  /** name{labels} -> latest metric. */
  const latest = new Map();
  const completions = [];
  let received = 0;
  let lastStep = -1;
  const runs = new Set();

  const $ = (id) => document.getElementById(id);
  const fmt = (x) =>
    x === null || x === undefined
      ? '-'
      : Math.abs(x) >= 1000
        ? String(Math.round(x * 10) / 10)
        : String(Number(x.toPrecision(4)));
  // Steps are whole numbers: ticks on 1, 2, 5, 10, 20, 50, ...
  const STEP_TICKS = [1, 2, 5]
    .flatMap((m) => [1, 10, 100, 1000, 10000, 100000].map((p) => m * p))
    .sort((a, b) => a - b);

  // --- charts ---------------------------------------------------------------------------------------
  const charts = CHARTS.map((spec, i) => {
    const panel = document.createElement('div');
    panel.className = 'panel';
    const title = document.createElement('h2');
    title.textContent = spec.title;
    const el = document.createElement('div');
    el.className = 'chart';
    el.id = `chart-${i}`;
    const empty = document.createElement('div');
    empty.className = 'empty';
    empty.textContent = `waiting for ${spec.series.join(', ')}`;
    panel.append(title, el, empty);
    $('charts').append(panel);
    const plot = new uPlot(
      {
        width: Math.max(300, el.clientWidth),
        height: 220,
        // A flat series (all zeros, say) gets a small range around its value, not uPlot's 0-100.
        scales: {
          x: { time: false },
          y: {
            range: (u, min, max) => {
              if (min === null || max === null) return [0, 1];
              if (min === max) return [min - (Math.abs(min) || 1) * 0.1, max + (Math.abs(max) || 1) * 0.1];
              return uPlot.rangeNum(min, max, 0.1, true);
            },
          },
        },
        axes: [{ label: 'step', incrs: STEP_TICKS }, { size: 60 }],
        legend: { live: true },
        series: [
          { label: 'step' },
          ...spec.series.map((name, j) => ({
            label: name,
            stroke: COLORS[j % COLORS.length],
            width: 2,
            spanGaps: true,
            points: { size: 4 },
          })),
        ],
      },
      [[], ...spec.series.map(() => [])],
      el,
    );
    new ResizeObserver(() => {
      const width = el.clientWidth;
      if (width > 0 && width !== plot.width) plot.setSize({ width, height: 220 });
    }).observe(el);
    return { spec, plot, empty };
  });

  /** The chart's aligned data: the union of its series' steps, each series null where it has no value. */
  function alignedData(spec) {
    const steps = new Set();
    for (const name of spec.series) for (const step of points.get(name)?.keys() ?? []) steps.add(step);
    const xs = [...steps].sort((a, b) => a - b);
    return [xs, ...spec.series.map((name) => xs.map((x) => points.get(name)?.get(x) ?? null))];
  }

  // --- tables ---------------------------------------------------------------------------------------
  function cell(row, text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function renderCompletions() {
    const body = document.querySelector('#completions tbody');
    const rows = completions.map((c) => {
      const tr = document.createElement('tr');
      cell(tr, String(c.step), 'num');
      cell(tr, fmt(c.reward), `num ${c.reward > 0 ? 'good' : 'bad'}`);
      cell(
        tr,
        Object.entries(c.rewards)
          .map(([k, v]) => `${k} ${fmt(v)}`)
          .join(', '),
      );
      cell(tr, c.prompt, 'text');
      cell(tr, c.completion, 'text');
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function renderLatest() {
    const items = [...latest.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, m]) => {
        const item = document.createElement('div');
        item.className = 'kv';
        const span = (text, className) => {
          const el = document.createElement('span');
          el.className = className;
          el.textContent = text;
          item.append(el);
          return el;
        };
        span(key, 'name').title = `${key} (${m.kind})`;
        span(m.step === undefined ? '' : `step ${m.step}`, 'step');
        span(fmt(m.value), 'value');
        return item;
      });
    $('latest').replaceChildren(...items);
  }

  // --- redraws, at most every REDRAW_MS ---------------------------------------------------------------
  let dirty = { charts: false, completions: false, latest: false };
  let timer;
  function schedule(what) {
    dirty[what] = true;
    if (timer === undefined) timer = setTimeout(redraw, REDRAW_MS);
  }
  function redraw() {
    timer = undefined;
    const was = dirty;
    dirty = { charts: false, completions: false, latest: false };
    if (was.charts) {
      for (const c of charts) {
        const data = alignedData(c.spec);
        c.plot.setData(data);
        c.empty.hidden = data[0].length > 0;
      }
    }
    if (was.completions) renderCompletions();
    if (was.latest) renderLatest();
    $('run').textContent = [...runs].join(', ');
    $('summary').textContent =
      `${received} metrics${lastStep >= 0 ? `, step ${lastStep}` : ''}, ${completions.length} recent completions`;
  }

  // --- the stream -----------------------------------------------------------------------------------
  function setStatus(text) {
    const el = $('status');
    el.textContent = text;
    el.className = `status ${text}`;
  }

  function onMetric(m) {
    received++;
    runs.add(m.run);
    const labels = m.labels
      ? `{${Object.entries(m.labels)
          .map(([k, v]) => `${k}=${v}`)
          .join(',')}}`
      : '';
    latest.set(m.name + labels, m);
    schedule('latest');
    if (m.step !== undefined) lastStep = Math.max(lastStep, m.step);
    if (m.kind === 'value' && m.step !== undefined) {
      let series = points.get(m.name);
      if (!series) points.set(m.name, (series = new Map()));
      series.set(m.step, m.value);
      schedule('charts');
    }
  }

  function onCompletion(c) {
    completions.unshift(c);
    if (completions.length > MAX_COMPLETIONS) completions.length = MAX_COMPLETIONS;
    schedule('completions');
  }

  // The page's own query (?name=...&run=...) filters the stream too.
  const source = new EventSource(`metrics/stream${location.search}`);
  source.addEventListener('open', () => setStatus('live'));
  source.addEventListener('metric', (e) => onMetric(JSON.parse(e.data)));
  source.addEventListener('completion', (e) => onCompletion(JSON.parse(e.data)));
  // Reconnected to another stream (the run restarted on this port): its replay is everything there is.
  source.addEventListener('reset', () => {
    points.clear();
    latest.clear();
    completions.length = 0;
    runs.clear();
    received = 0;
    lastStep = -1;
    schedule('charts');
    schedule('completions');
    schedule('latest');
  });
  source.addEventListener('end', () => {
    setStatus('ended');
    source.close();
  });
  source.addEventListener('error', () => {
    if (source.readyState !== EventSource.CLOSED) setStatus('disconnected');
  });

  /** For tests and the console: what the dashboard has received and what its charts hold. */
  window.__rxrl = {
    /** [step, value] pairs received for a per-step metric, by step. */
    points: (name) => [...(points.get(name) ?? new Map()).entries()].sort((a, b) => a[0] - b[0]),
    /** [step, value] pairs the chart drawing `name` holds now (uPlot's data), nulls left out. */
    chartPoints: (name) => {
      for (const c of charts) {
        const i = c.spec.series.indexOf(name);
        if (i < 0) continue;
        const [xs, ...ys] = c.plot.data;
        return xs.map((x, k) => [x, ys[i][k]]).filter(([, y]) => y !== null && y !== undefined);
      }
      return [];
    },
    completions: () => completions.slice(),
    latest: (key) => latest.get(key),
    received: () => received,
  };
})();
