// Samples per second through groupSamples -> groupRelativeAdvantages -> toGradientBatches, side by side
// with a plain RxJS map over the same objects (the ceiling) and RxJS groupBy (for scale), in one run.
// Usage: npm run bench:operators -- [--samples 2000000] [--group-size 8] [--repeats 3]
import { parseArgs } from 'node:util';
import { Observable, finalize, groupBy, map, mergeMap, take, toArray } from 'rxjs';
import { SCHEMA_VERSION, type ScoredRollout } from '../schemas/index.ts';
import { Metrics } from '../src/metrics/metrics.ts';
import { groupRelativeAdvantages } from '../src/operators/groupRelativeAdvantages.ts';
import { groupSamples } from '../src/operators/groupSamples.ts';
import { toGradientBatches } from '../src/operators/toGradientBatches.ts';

const { values } = parseArgs({
  options: {
    samples: { type: 'string', default: '2000000' },
    'group-size': { type: 'string', default: '8' },
    repeats: { type: 'string', default: '3' },
  },
});
const N = Number(values.samples);
const G = Number(values['group-size']);
const repeats = Number(values.repeats);

// Token arrays are shared: the bench measures the operators, not allocation of payloads.
const promptTokenIds = Array.from({ length: 32 }, (_, i) => i);
const completionTokenIds = Array.from({ length: 64 }, (_, i) => i);
const behaviourLogProbs = completionTokenIds.map(() => -1);
const prompt = { schemaVersion: SCHEMA_VERSION, id: 'p', task: 'arithmetic', text: '1+1' };

/** The i-th synthetic scored rollout; every arm pays for making them, as a real source pays to decode. */
function makeSample(i: number): ScoredRollout {
  const groupId = `g${Math.floor(i / G)}`;
  const index = i % G;
  const reward = (i * 7919) % 3 === 0 ? 1 : 0;
  return {
    schemaVersion: SCHEMA_VERSION,
    id: `${groupId}/${index}`,
    groupId,
    index,
    groupSize: G,
    prompt,
    promptTokenIds,
    completionTokenIds,
    completion: '',
    behaviourLogProbs,
    policyVersion: 0,
    finishReason: 'eos',
    rewards: { accuracy: reward },
    reward,
  };
}

const source = new Observable<ScoredRollout>((subscriber) => {
  for (let i = 0; i < N && !subscriber.closed; i++) subscriber.next(makeSample(i));
  subscriber.complete();
});

function time(build: (source: Observable<ScoredRollout>) => Observable<unknown>): number {
  const t0 = performance.now();
  build(source).subscribe();
  return N / ((performance.now() - t0) / 1000);
}

const only = process.env.ARM;
const arms: Record<string, (source: Observable<ScoredRollout>) => Observable<unknown>> = {
  'plain map (ceiling)': (s) => s.pipe(map((x) => x.reward)),
  'rxrl group -> advantages -> batches': (s) => {
    const metrics = new Metrics({ run: 'bench' });
    metrics.stream.subscribe(); // metrics on: a subscriber makes flushes publish
    const flusher = setInterval(() => metrics.flush(), 1000);
    return s.pipe(
      groupSamples({ maxWaitMs: 60_000, maxOpenGroups: 10_000, metrics }),
      groupRelativeAdvantages({ estimator: 'grpo', metrics }),
      toGradientBatches({ limit: { samples: 256 }, metrics }),
      finalize(() => {
        clearInterval(flusher);
        metrics.flush();
      }),
    );
  },
  'rxjs groupBy, groups closed after G (reference)': (s) =>
    s.pipe(
      groupBy((x) => x.groupId),
      mergeMap((g) => g.pipe(take(G), toArray())),
    ),
};

const results = new Map<string, number[]>();
for (let r = 0; r < repeats; r++) {
  for (const [label, build] of Object.entries(arms)) {
    if (only && !label.includes(only)) continue;
    const rate = time(build);
    results.set(label, [...(results.get(label) ?? []), rate]);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ceiling = median(results.get('plain map (ceiling)') ?? [1]);
console.log(
  `bench/operators: ${N.toLocaleString()} scored rollouts, groups of ${G}, median of ${repeats} runs, one core`,
);
for (const [label, rates] of results) {
  const m = median(rates);
  console.log(
    `  ${label.padEnd(48)} ${(m / 1e6).toFixed(2).padStart(6)} M samples/s   ${(m / ceiling).toFixed(2)}x ceiling`,
  );
}
