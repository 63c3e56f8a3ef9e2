// Samples per second through groupSamples -> groupRelativeAdvantages -> toGradientBatches, side by side
// with a plain RxJS map over the same objects (the ceiling) and RxJS groupBy (for scale), in one run.
// Usage: npm run bench:operators -- [--samples 500000] [--group-size 8] [--rounds 10]
// The arms take turns in short rounds and each ratio is taken within a round: on a machine whose speed
// swings between runs (shared cores), the median of per-round ratios is the stable figure.
import { parseArgs } from 'node:util';
import { Observable, finalize, groupBy, map, mergeMap, take, toArray } from 'rxjs';
import { SCHEMA_VERSION, type ScoredRollout } from '../schemas/index.ts';
import { Metrics } from '../src/metrics/metrics.ts';
import { groupRelativeAdvantages } from '../src/operators/groupRelativeAdvantages.ts';
import { groupSamples } from '../src/operators/groupSamples.ts';
import { toGradientBatches } from '../src/operators/toGradientBatches.ts';

const { values } = parseArgs({
  options: {
    samples: { type: 'string', default: '500000' },
    'group-size': { type: 'string', default: '8' },
    rounds: { type: 'string', default: '10' },
  },
});
const N = Number(values.samples);
const G = Number(values['group-size']);
const rounds = Number(values.rounds);

const PROMPT_TOKENS = 32;
const COMPLETION_TOKENS = 64;
const prompt = { schemaVersion: SCHEMA_VERSION, id: 'p', task: 'arithmetic', text: '1+1' };

/**
 * The i-th synthetic scored rollout, with its own token and log-prob arrays as a decoded record has
 * them; every arm pays for making them, as a real source pays to decode.
 */
function makeSample(i: number): ScoredRollout {
  const promptTokenIds = new Array<number>(PROMPT_TOKENS);
  for (let t = 0; t < PROMPT_TOKENS; t++) promptTokenIds[t] = t;
  const completionTokenIds = new Array<number>(COMPLETION_TOKENS);
  const behaviourLogProbs = new Array<number>(COMPLETION_TOKENS);
  for (let t = 0; t < COMPLETION_TOKENS; t++) {
    completionTokenIds[t] = t;
    behaviourLogProbs[t] = -1.5;
  }
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

// Each sample is stored before it is emitted: without the store, V8 may see that the map arm reads
// one field and never allocate the object at all.
const recent = new Array<ScoredRollout>(1024);
const source = new Observable<ScoredRollout>((subscriber) => {
  for (let i = 0; i < N && !subscriber.closed; i++) {
    const sample = makeSample(i);
    recent[i & 1023] = sample;
    subscriber.next(sample);
  }
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

// Rates per arm, round by round; an arm's ratio is taken within each round (against the ceiling
// measured moments before), and the median of those ratios is reported.
const results = new Map<string, number[]>();
for (let r = 0; r < rounds; r++) {
  for (const [label, build] of Object.entries(arms)) {
    if (only && !label.includes(only)) continue;
    const rate = time(build);
    results.set(label, [...(results.get(label) ?? []), rate]);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ceiling = results.get('plain map (ceiling)');
console.log(
  `bench/operators: ${N.toLocaleString()} scored rollouts a round, groups of ${G}, ${rounds} interleaved rounds, one core`,
);
console.log(`  ${'arm'.padEnd(48)} median rate        median ratio to the ceiling in the same round`);
for (const [label, rates] of results) {
  const ratio = ceiling ? median(rates.map((rate, r) => rate / ceiling[r]!)).toFixed(2) + 'x' : '-';
  console.log(`  ${label.padEnd(48)} ${(median(rates) / 1e6).toFixed(2).padStart(5)} M samples/s   ${ratio}`);
}
