// Synchronous (eta = 0) vs asynchronous (eta = 2) GRPO on the same pipeline and sample budget, side by
// side in one run: wall-clock to reach the same held-out pass@1, and the speedup.
// Usage: npm run bench:async -- [--pipeline r1-zero-arithmetic] [--steps 40] [--eval-every 10]
//        [--target <pass@1>] [--backend auto]
// The target defaults to the lower of the two runs' best held-out pass@1, so both reach it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadPipeline } from '../src/cli/pipelines.ts';
import type { BackendRequest } from '../src/policy/backend.ts';
import { runR1Zero, type RunSummary } from '../src/run/r1zero.ts';

const { values } = parseArgs({
  options: {
    pipeline: { type: 'string', default: 'r1-zero-arithmetic' },
    steps: { type: 'string', default: '40' },
    'eval-every': { type: 'string', default: '10' },
    target: { type: 'string' },
    backend: { type: 'string', default: 'auto' },
    'cache-dir': { type: 'string', default: '.cache/base-models' },
  },
});
const steps = Number(values.steps);
const base = await loadPipeline(values.pipeline);
const topology = { ...base, eval: { ...base.eval, every: Number(values['eval-every']) } };
const scratch = mkdtempSync(join(tmpdir(), 'rxrl-bench-async-'));

async function run(eta: number): Promise<RunSummary> {
  process.stdout.write(
    `eta=${eta}: ${steps} steps of ${topology.grpo.promptsPerStep}x${topology.grpo.groupSize} samples ... `,
  );
  const summary = await runR1Zero({
    topology,
    backend: values.backend as BackendRequest,
    runDir: join(scratch, `eta${eta}`),
    cacheDir: values['cache-dir'],
    steps,
    eta,
  });
  const last = summary.evals[summary.evals.length - 1]!;
  console.log(
    `${last.seconds.toFixed(0)} s of RL, held-out pass@1 ${summary.evals.map((e) => e.result.pass1.toFixed(2)).join(' -> ')}`,
  );
  return summary;
}

try {
  // The base model is pretrained (or read from the cache) before either arm's clock starts.
  const sync = await run(0);
  const async = await run(2);
  const best = (s: RunSummary) => Math.max(...s.evals.map((e) => e.result.pass1));
  const target = values.target !== undefined ? Number(values.target) : Math.min(best(sync), best(async));
  const reach = (s: RunSummary) => s.evals.find((e) => e.step > 0 && e.result.pass1 >= target);
  const rate = (s: RunSummary) => s.steps / s.evals[s.evals.length - 1]!.seconds;
  const [rs, ra] = [reach(sync), reach(async)];
  console.log(
    `\nsteps per minute: eta=0 ${(60 * rate(sync)).toFixed(1)}, eta=2 ${(60 * rate(async)).toFixed(1)}: ${(rate(async) / rate(sync)).toFixed(2)}x`,
  );
  if (rs && ra) {
    console.log(
      `time to held-out pass@1 >= ${target.toFixed(2)}: eta=0 ${rs.seconds.toFixed(0)} s (step ${rs.step}), ` +
        `eta=2 ${ra.seconds.toFixed(0)} s (step ${ra.step}): speedup ${(rs.seconds / Math.max(ra.seconds, 1e-9)).toFixed(2)}x (goal 1.5x)`,
    );
  } else {
    console.log(
      `held-out pass@1 >= ${target.toFixed(2)} not reached by ${rs ? 'eta=2' : 'eta=0'}; no time-to-target ratio`,
    );
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
