import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import base from '../../pipelines/r1-zero-arithmetic.ts';
import { loadCheckpoint } from '../../src/policy/checkpoint.ts';
import { evaluateCheckpoint } from '../../src/run/evaluate.ts';
import { defaultLearnerThreads, runR1Zero, type RunEvent } from '../../src/run/r1zero.ts';
import { defineTopology } from '../../src/topology/topology.ts';
import { validateMessage } from '../../src/validation.ts';
import { writeSlowReward } from '../fixtures.ts';

const root = mkdtempSync(join(tmpdir(), 'rxrl-run-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

// A tiny version of the shipped pipeline: the same code path, seconds instead of minutes.
const tiny = defineTopology({
  ...base,
  name: 'tiny',
  data: { trainPrompts: 200, testPrompts: 8 },
  model: { contextLength: 64, dModel: 32, nLayers: 1, nHeads: 2 },
  pretrain: { ...base.pretrain, steps: 30, batchSize: 16 },
  grpo: { ...base.grpo, promptsPerStep: 2, groupSize: 4, dynamicSampling: false },
  sampling: { ...base.sampling, maxNewTokens: 24 },
  eval: { ...base.eval, every: 0, prompts: 4, k: 2 },
  run: { steps: 4, checkpointEvery: 2 },
});

const run = (name: string, extra: Partial<Parameters<typeof runR1Zero>[0]> = {}) =>
  runR1Zero({
    topology: tiny,
    backend: 'wasm',
    runDir: join(root, name),
    cacheDir: join(root, 'cache'),
    ...extra,
  });

describe('runR1Zero', { timeout: 240_000 }, () => {
  it('trains with generation and learning on worker threads, and every sample is accounted for', async () => {
    const events: RunEvent[] = [];
    const summary = await run('async', { eta: 1, onEvent: (e) => events.push(e) });
    expect(summary.steps).toBe(4);
    expect(summary.backend).toEqual({ generator: 'wasm', learner: 'wasm' });
    const { generated, trained, drops } = summary.accounting;
    expect(trained).toBe(4 * 8);
    expect(generated).toBe(trained + Object.values(drops).reduce((a, b) => a + b, 0));
    expect(events.filter((e) => e.kind === 'step').map((e) => (e as { step: number }).step)).toEqual([
      1, 2, 3, 4,
    ]);
    expect(summary.evals.map((e) => e.step)).toEqual([0, 4]);
    const lines = readFileSync(join(root, 'async', 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n');
    for (const line of lines) expect(validateMessage('Metric', JSON.parse(line)).ok).toBe(true);
    expect(lines.some((l) => l.includes('"train/loss"'))).toBe(true);
    // Sampled completion tokens, a counter for Prometheus's rate(): 1 to maxNewTokens per sample generated.
    const tokens = lines
      .map((line) => JSON.parse(line) as { name: string; kind: string; value: number })
      .filter((m) => m.name === 'rollout.tokens' && m.kind === 'counter')
      .at(-1)?.value;
    expect(tokens).toBeGreaterThanOrEqual(generated);
    expect(tokens).toBeLessThanOrEqual(generated * tiny.sampling.maxNewTokens);
  });

  it("rxrl eval on the final checkpoint reproduces the run's last held-out evaluation", async () => {
    const summary = await run('evaluated', { eta: 0 });
    const last = summary.evals[summary.evals.length - 1]!;
    const result = await evaluateCheckpoint({
      topology: tiny,
      backend: 'wasm',
      checkpoint: join(root, 'evaluated', 'checkpoint'),
      settings: { ...tiny.eval, maxNewTokens: tiny.sampling.maxNewTokens },
      seed: tiny.seed + last.step,
    });
    expect(result.policyVersion).toBe(4);
    expect(result.questions).toBe(4);
    expect(result.samplesPerQuestion).toBe(2);
    // Per prompt too, in prompt order: what `rxrl eval --against` pairs with another checkpoint's.
    expect(result.pass1ByQuestion).toHaveLength(4);
    expect(result.pass1ByQuestion.reduce((a, b) => a + b, 0) / 4).toBeCloseTo(result.pass1, 12);
    const { backend, policyVersion, ...rest } = result;
    expect({ backend, policyVersion }).toEqual({ backend: 'wasm', policyVersion: 4 });
    expect(rest).toEqual(last.result);
    expect(summary.evals[0]!.seconds).toBeLessThan(last.seconds);
    await expect(
      evaluateCheckpoint({
        topology: tiny,
        backend: 'wasm',
        checkpoint: join(root, 'no-such-run'),
        settings: { ...tiny.eval, maxNewTokens: 24 },
        seed: 0,
      }),
    ).rejects.toThrow(`eval: no checkpoint at ${join(root, 'no-such-run')} (no such directory)`);
    await expect(
      evaluateCheckpoint({
        topology: tiny,
        backend: 'wasm',
        checkpoint: root,
        settings: { ...tiny.eval, maxNewTokens: 24 },
        seed: 0,
      }),
    ).rejects.toThrow(`eval: ${root} is not a checkpoint directory (no manifest.json in it)`);
  });

  it("scores with a reward of one's own from a module (TRL's reward_funcs), and refuses to start on one that does not load", async () => {
    const module = join(root, 'brief.ts');
    writeFileSync(
      module,
      // A constant, so that the published mean proves every sample was scored by it.
      'export default (_input: unknown) => 0.25;\n',
    );
    const withModule = (path: string) =>
      defineTopology({ ...tiny, rewards: [...tiny.rewards, { kind: 'module', path, weight: 0.5 }] });
    const summary = await runR1Zero({
      topology: withModule(module),
      backend: 'wasm',
      runDir: join(root, 'module'),
      cacheDir: join(root, 'cache'),
      eta: 0,
      steps: 2,
    });
    expect(summary.steps).toBe(2);
    const means = readFileSync(join(root, 'module', 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { name: string; value: number })
      .filter((m) => m.name === 'rewards/brief/mean');
    expect(means.map((m) => m.value)).toEqual([0.25, 0.25]);
    await expect(
      runR1Zero({
        topology: withModule(join(root, 'missing.ts')),
        backend: 'wasm',
        runDir: join(root, 'module'),
        cacheDir: join(root, 'cache'),
      }),
    ).rejects.toThrow(`reward missing: no module at ${join(root, 'missing.ts')}`);
    expect(existsSync(join(root, 'module.previous'))).toBe(false); // the earlier run was left where it was
  });

  it('a group that times out gives all its places back: samples still to come arrive late, and the run goes on', async () => {
    // Every twelfth score takes 400 ms, past the groups' 100 ms: those groups close incomplete, and their
    // last sample comes late. At eta 0 a run that gave back only the samples received waited forever.
    const module = writeSlowReward(join(root, 'slow.ts'), 12, 400);
    const summary = await runR1Zero({
      topology: defineTopology({
        ...tiny,
        rewards: [...tiny.rewards, { kind: 'module', path: module, weight: 0.5 }],
        grpo: { ...tiny.grpo, groupTimeoutMs: 100 },
      }),
      backend: 'wasm',
      runDir: join(root, 'slow'),
      cacheDir: join(root, 'cache'),
      eta: 0,
      steps: 2,
    });
    expect(summary.steps).toBe(2);
    const { generated, trained, drops } = summary.accounting;
    expect(drops['incomplete_timeout']).toBeGreaterThan(0);
    expect(drops['late']).toBeGreaterThan(0);
    // Nothing lost: the late samples are dropped too, and everything adds up.
    expect(trained + Object.values(drops).reduce((a, b) => a + b, 0)).toBe(generated);
  });

  it('generation running ahead under the staleness bound does not spend the dynamic-sampling budget', async () => {
    // One batch's worth of drops allowed, and generation up to two batches ahead: nothing is dropped here
    // (dynamic sampling off), so nothing is spent (counting samples started, this run failed at once).
    const summary = await run('ahead', {
      topology: defineTopology({ ...tiny, grpo: { ...tiny.grpo, maxGenerationRounds: 1 } }),
      eta: 2,
      steps: 3,
    });
    expect(summary.steps).toBe(3);
  });

  it('reuses the cached base model on the next run', async () => {
    await run('warm', { steps: 1 }); // makes the base model, if no test before this one has
    const events: RunEvent[] = [];
    await run('cached', { steps: 1, onEvent: (e) => events.push(e) });
    expect(events.find((e) => e.kind === 'base-model')).toMatchObject({ cached: true });
    expect(events.some((e) => e.kind === 'pretrain')).toBe(false);
  });

  it('takes epochs x minibatches optimiser steps per batch and makes one policy version of them: at eta 0 nothing goes stale', async () => {
    const events: RunEvent[] = [];
    const savedEvals: number[] = [];
    const summary = await runR1Zero({
      topology: defineTopology({
        ...tiny,
        grpo: { ...tiny.grpo, epochs: 2, minibatches: 2 },
        eval: { ...tiny.eval, every: 2 },
      }),
      backend: 'wasm',
      runDir: join(root, 'epochs'),
      cacheDir: join(root, 'cache'),
      eta: 0,
      onEvent: (e) => {
        events.push(e);
        // Step 2 is a checkpoint and an evaluation: the checkpoint's state keeps that evaluation.
        if (e.kind === 'step' && e.step === 3)
          savedEvals.push(
            ...(
              JSON.parse(readFileSync(join(root, 'epochs', 'state.json'), 'utf8')) as {
                evals: { step: number }[];
              }
            ).evals.map((x) => x.step),
          );
      },
    });
    const steps = events.filter((e) => e.kind === 'step') as Extract<RunEvent, { kind: 'step' }>[];
    expect(steps.map((e) => [e.step, e.report.optimiserStep])).toEqual([
      [1, 4],
      [2, 8],
      [3, 12],
      [4, 16],
    ]);
    expect(summary.accounting.trained).toBe(4 * 8);
    expect(summary.accounting.drops.stale ?? 0).toBe(0);
    expect(summary.evals.map((e) => e.step)).toEqual([0, 2, 4]);
    expect(savedEvals).toEqual([0, 2]);
    expect((await loadCheckpoint(join(root, 'epochs', 'checkpoint'))).policyVersion).toBe(4);
  });

  it('a resumed run ends where an uninterrupted one does: same data order, no update twice', async () => {
    const whole = await run('whole', { eta: 0 });
    const firstPart = await run('split', { eta: 0, steps: 2 });
    const resumed = await run('split', { eta: 0, resume: true });
    expect(resumed.steps).toBe(4);
    // Its evaluations go on from the first part's: the first is still the one from before RL.
    expect(resumed.evals.map((e) => e.step)).toEqual([0, 2, 4]);
    expect(resumed.evals[0]).toEqual(firstPart.evals[0]);
    // Their seconds go on from the first part's RL time instead of starting again from 0.
    const seconds = resumed.evals.map((e) => e.seconds);
    expect(seconds[2]).toBeGreaterThan(seconds[1]!);
    const state = (dir: string) => {
      const { trainedCursor, version, counters } = JSON.parse(
        readFileSync(join(root, dir, 'state.json'), 'utf8'),
      );
      return {
        position: { trainedCursor, version },
        counters: counters as { name: string; value: number }[],
      };
    };
    expect(state('split').position).toEqual(state('whole').position);
    // Counts go on from the checkpoint's: the accounting covers the whole run, and adds up.
    const { generated, trained, drops } = resumed.accounting;
    expect(trained).toBe(4 * 8);
    expect(generated).toBe(trained + Object.values(drops).reduce((a, b) => a + b, 0));
    const saved = state('split').counters;
    expect(saved.find((c) => c.name === 'samples.trained')?.value).toBe(4 * 8);
    const log = readFileSync(join(root, 'split', 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n');
    const lastTrained = log
      .map((line) => JSON.parse(line) as { name: string; kind: string; value: number })
      .filter((m) => m.name === 'samples.trained' && m.kind === 'counter')
      .at(-1);
    expect(lastTrained?.value).toBe(4 * 8);
    const a = await loadCheckpoint(join(root, 'whole', 'checkpoint'));
    const b = await loadCheckpoint(join(root, 'split', 'checkpoint'));
    expect(b.policyVersion).toBe(a.policyVersion);
    for (const [name, v] of a.model.params) {
      expect(Array.from(b.model.params.get(name)!.dataSync()), name).toEqual(Array.from(v.dataSync()));
    }
    expect(whole.steps).toBe(4);
    // Resuming the finished run trains nothing and evaluates nothing again.
    const events: RunEvent[] = [];
    const again = await run('split', { eta: 0, resume: true, onEvent: (e) => events.push(e) });
    expect(events.filter((e) => e.kind === 'step')).toEqual([]);
    expect(again.evals).toEqual(resumed.evals);
  });

  it("a run stopped between its checkpoint and state.json resumes from the checkpoint's own state", async () => {
    await run('cut', { eta: 0, steps: 2 });
    // A state.json cut off mid-write (or left one checkpoint behind): the checkpoint's metadata has the state.
    writeFileSync(join(root, 'cut', 'state.json'), '{"trainedCursor": 1');
    const resumed = await run('cut', { eta: 0, resume: true });
    expect(resumed.steps).toBe(4);
    const { generated, trained, drops } = resumed.accounting;
    expect(trained).toBe(4 * 8); // the first two steps' counts came back from the checkpoint
    expect(generated).toBe(trained + Object.values(drops).reduce((a, b) => a + b, 0));
  });

  it('a run stopped during the evaluation of its checkpoint step evaluates that step when resumed', async () => {
    const evalEvery2 = defineTopology({ ...tiny, eval: { ...tiny.eval, every: 2 } });
    const failure = new Error('stopped during the evaluation');
    await expect(
      run('eval-cut', {
        topology: evalEvery2,
        eta: 0,
        onEvent: (e) => {
          if (e.kind === 'eval' && e.step === 2) throw failure;
        },
      }),
    ).rejects.toBe(failure);
    const resumed = await run('eval-cut', { topology: evalEvery2, eta: 0, resume: true });
    expect(resumed.evals.map((e) => e.step)).toEqual([0, 2, 4]);
  });

  it('a failure in the first evaluation closes the workers: the calling process can end', async () => {
    // In a process of its own: worker threads left running would keep it alive after the rejection.
    const script = join(root, 'eval-fails.mts');
    const src = (file: string) => JSON.stringify(fileURLToPath(new URL(file, import.meta.url)));
    writeFileSync(
      script,
      `import { runR1Zero } from ${src('../../src/run/r1zero.ts')};\n` +
        `import { defineTopology } from ${src('../../src/topology/topology.ts')};\n` +
        `const tiny = defineTopology(${JSON.stringify(tiny)});\n` +
        'runR1Zero({ topology: tiny, backend: "wasm", eta: 0,\n' +
        `  runDir: ${JSON.stringify(join(root, 'eval-fails'))}, cacheDir: ${JSON.stringify(join(root, 'cache'))},\n` +
        '  onEvent: (e) => { if (e.kind === "eval") throw new Error("no evaluation today"); },\n' +
        '}).catch((e) => console.log(`rejected: ${e.message}`));\n',
    );
    const child = spawnSync(process.execPath, ['--import', 'tsx', script], {
      encoding: 'utf8',
      timeout: 90_000,
    });
    expect(child.stdout).toContain('rejected: no evaluation today');
    expect(child.signal, 'the process was still alive when the timeout killed it').toBeNull();
    expect(child.status).toBe(0);
  });

  it("runs the learner's kernels on helper threads when asked, says so, and trains the same weights", async () => {
    // The plumbing, from the run to the learner worker: this tiny model's products are too small to
    // split (kernelThreads.test.ts trains a learner step on split products).
    const one = await run('one-thread', { eta: 0, learnerThreads: 1 });
    const two = await run('two-threads', { eta: 0, learnerThreads: 2 });
    expect(one.backend).toEqual({ generator: 'wasm', learner: 'wasm' });
    expect(two.backend).toEqual({ generator: 'wasm', learner: 'wasm, 2 kernel threads' });
    // Unsaid, the learner takes every core but the generator's.
    const unsaid = await run('default-threads', { eta: 0, steps: 1 });
    const n = Math.max(1, availableParallelism() - 1);
    expect(defaultLearnerThreads()).toBe(n);
    expect(unsaid.backend.learner).toBe(n === 1 ? 'wasm' : `wasm, ${n} kernel threads`);
    const a = await loadCheckpoint(join(root, 'one-thread', 'checkpoint'));
    const b = await loadCheckpoint(join(root, 'two-threads', 'checkpoint'));
    for (const [name, v] of a.model.params) {
      expect(Array.from(b.model.params.get(name)!.dataSync()), name).toEqual(Array.from(v.dataSync()));
    }
  });

  it('a new run moves an earlier one in its directory aside, and leaves it as it was when the backend cannot start', async () => {
    await run('again', { eta: 0, steps: 1 });
    const dir = join(root, 'again');
    const files = ['metrics.jsonl', 'state.json', 'summary.json'];
    const earlier = Object.fromEntries(files.map((f) => [f, readFileSync(join(dir, f), 'utf8')]));
    expect(earlier['metrics.jsonl']!.length).toBeGreaterThan(0);
    await expect(run('again', { backend: 'tensorflow2' as never })).rejects.toThrow(
      /unknown backend 'tensorflow2'/,
    );
    for (const f of files) expect(readFileSync(join(dir, f), 'utf8'), f).toBe(earlier[f]);
    const events: RunEvent[] = [];
    await run('again', { eta: 0, steps: 2, onEvent: (e) => events.push(e) });
    expect(events.filter((e) => e.kind === 'replacing')).toEqual([
      { kind: 'replacing', dir, step: 1, movedTo: `${dir}.previous` },
    ]);
    // The earlier run, whole, where it moved (so it can still be resumed there); this one in its place.
    for (const f of files) expect(readFileSync(join(`${dir}.previous`, f), 'utf8'), f).toBe(earlier[f]);
    expect(existsSync(join(`${dir}.previous`, 'checkpoint', 'manifest.json'))).toBe(true);
    expect(JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')).version).toBe(2);
    const resumed = await run('again.previous', { eta: 0, steps: 2, resume: true });
    expect(resumed.steps).toBe(2);
  });

  it('a failure in training (here an onEvent that throws) ends the run with that error and closes its workers', async () => {
    const failure = new Error('the dashboard went away');
    const events: RunEvent[] = [];
    await expect(
      run('failing', {
        eta: 1,
        onEvent: (e) => {
          events.push(e);
          if (e.kind === 'step' && e.step === 2) throw failure;
        },
      }),
    ).rejects.toBe(failure);
    expect(events.filter((e) => e.kind === 'step').map((e) => (e as { step: number }).step)).toEqual([1, 2]);
  }, 120_000);

  it('refuses to start when a jsonl test file holds fewer prompts than its evaluation asks for', async () => {
    writeFileSync(join(root, 'train.jsonl'), '{"prompt":"1+1","answer":2}\n{"prompt":"2+5","answer":7}\n');
    writeFileSync(join(root, 'test.jsonl'), '{"prompt":"3+4","answer":7}\n');
    const topology = defineTopology({
      ...tiny,
      name: 'short-test-file',
      task: { kind: 'jsonl', train: join(root, 'train.jsonl'), test: join(root, 'test.jsonl') },
      pretrain: { ...tiny.pretrain, steps: 0 },
    });
    await expect(run('short-test-file', { topology })).rejects.toThrow(
      'eval: asked for 4 prompts but the held-out set of short-test-file has 1',
    );
  });

  it('says so when there is nothing to resume', async () => {
    await expect(run('nothing', { resume: true })).rejects.toThrow(
      /no checkpoint in .*nothing to resume from/,
    );
  });
});
