import * as tf from '@tensorflow/tfjs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GPT } from '../../src/policy/gpt.ts';
import {
  drawToken,
  sample,
  sampleFullForward,
  truncatedSupport,
  type SampleOptions,
} from '../../src/policy/sampler.ts';
import { PROMPTS, TINY, distributions, tinyModel, useWasm } from './helpers.ts';

const NO_EOS = -1;
let model: GPT;
let sharp: GPT;
let rope: GPT;
let sharpRope: GPT;

beforeAll(async () => {
  await useWasm();
  model = tinyModel(11);
  sharp = tinyModel(12, 40);
  rope = tinyModel(11, 1, 'rope');
  sharpRope = tinyModel(12, 40, 'rope');
});
afterAll(() => {
  for (const m of [model, sharp, rope, sharpRope]) m.dispose();
});

const base: SampleOptions = { maxNewTokens: 8, temperature: 1, eosId: NO_EOS, seed: 1 };

/** For each sampled token, the full next-token distribution it was drawn from (recomputed). */
function stepDistributions(m: GPT, prompt: number[], tokens: number[], temperature: number): number[][] {
  const all = distributions(m, [...prompt, ...tokens], temperature);
  return tokens.map((_, i) => all[prompt.length - 1 + i]!);
}

describe('sample', () => {
  it('at temperature 0 takes the argmax, with log-probs at temperature 1', async () => {
    const rows = await sample(sharp, PROMPTS, { ...base, temperature: 0 });
    rows.forEach((row, b) => {
      expect(row.tokens).toHaveLength(8);
      stepDistributions(sharp, PROMPTS[b]!, row.tokens, 1).forEach((dist, i) => {
        expect(row.tokens[i]).toBe(dist.indexOf(Math.max(...dist)));
        expect(row.logProbs[i]).toBeCloseTo(Math.max(...dist), 4);
      });
    });
  });

  it('returns behaviour log-probs equal to sequenceLogProbs on the sampled tokens', async () => {
    for (const options of [
      { ...base, temperature: 0.7, seed: 3 },
      { ...base, temperature: 1.3, topK: 5, topP: 0.8, seed: 4 },
    ]) {
      const rows = await sample(model, PROMPTS, options);
      for (const [b, row] of rows.entries()) {
        const prompt = PROMPTS[b]!;
        const sequence = [...prompt, ...row.tokens];
        const fresh = tf.tidy(() => {
          const ids = tf.tensor2d([sequence], undefined, 'int32');
          const mask = tf.tensor2d([sequence.map((_, t) => (t >= prompt.length ? 1 : 0))]);
          return model.sequenceLogProbs(ids, mask, options.temperature).arraySync()[0]!;
        });
        const expected = fresh.slice(prompt.length - 1);
        expect(row.logProbs).toHaveLength(expected.length);
        row.logProbs.forEach((lp, i) => expect(Math.abs(lp - expected[i]!)).toBeLessThan(1e-4));
      }
    }
  });

  it('never samples outside the top-p nucleus or the top-k', async () => {
    const topP = 0.6;
    const topK = 3;
    let truncated = 0;
    for (const seed of [1, 2, 3]) {
      const rows = await sample(sharp, PROMPTS, { ...base, temperature: 1, topP, seed, maxNewTokens: 12 });
      const rowsK = await sample(model, PROMPTS, { ...base, temperature: 1, topK, seed, maxNewTokens: 12 });
      rows.forEach((row, b) => {
        stepDistributions(sharp, PROMPTS[b]!, row.tokens, 1).forEach((dist, i) => {
          const p = dist.map(Math.exp);
          const chosen = p[row.tokens[i]!]!;
          // A token is in the nucleus iff the mass of the tokens more likely than it is below p.
          const above = p.filter((q) => q > chosen).reduce((s, q) => s + q, 0);
          expect(above).toBeLessThan(topP + 1e-4);
          if (p.filter((q) => q > 1e-6).length > 1 && Math.max(...p) < topP) truncated++;
        });
      });
      rowsK.forEach((row, b) => {
        stepDistributions(model, PROMPTS[b]!, row.tokens, 1).forEach((dist, i) => {
          const rank = dist.filter((lp) => lp > dist[row.tokens[i]!]!).length;
          expect(rank).toBeLessThan(topK);
        });
      });
    }
    // The nucleus was a real restriction on some steps, so the test can fail.
    expect(truncated).toBeGreaterThan(0);
  });

  it('reports the mass truncation cut away before each draw: the size of the behaviour log-probs mismatch', async () => {
    const options = { ...base, temperature: 0.9, topK: 6, topP: 0.7, seed: 5, maxNewTokens: 10 };
    const rows = await sample(model, PROMPTS, options);
    let cutSomewhere = false;
    rows.forEach((row, b) => {
      // Recomputed: 1 - the probability of the ids truncatedSupport keeps, averaged over the draws.
      const cut = stepDistributions(model, PROMPTS[b]!, row.tokens, options.temperature).map((dist) => {
        const kept = truncatedSupport(Float32Array.from(dist), options);
        return 1 - kept.reduce((sum, id) => sum + Math.exp(dist[id]!), 0);
      });
      expect(row.truncatedMass).toBeCloseTo(cut.reduce((a, c) => a + c, 0) / cut.length, 4);
      cutSomewhere ||= row.truncatedMass > 0.01;
    });
    expect(cutSomewhere).toBe(true);
    // Nothing truncated, nothing cut; greedy decoding reports 0 as well.
    for (const row of await sample(model, PROMPTS, { ...base, temperature: 0.9 }))
      expect(row.truncatedMass).toBe(0);
    for (const row of await sample(model, PROMPTS, { ...base, temperature: 0 }))
      expect(row.truncatedMass).toBe(0);
  });

  it('is seeded: same seed, same tokens; another seed, other tokens', async () => {
    const a = await sample(model, PROMPTS, { ...base, seed: 42 });
    const b = await sample(model, PROMPTS, { ...base, seed: 42 });
    const c = await sample(model, PROMPTS, { ...base, seed: 43 });
    expect(b).toEqual(a);
    expect(c.map((r) => r.tokens)).not.toEqual(a.map((r) => r.tokens));
  });

  it.each(['learned', 'rope'] as const)(
    'gives the same tokens and log-probs with the KV cache as with a full forward per token (%s positions)',
    async (positions) => {
      const options = { ...base, temperature: 0.9, topK: 10, seed: 7, maxNewTokens: 12 };
      const m = positions === 'rope' ? rope : model;
      const cached = await sample(m, PROMPTS, options);
      const full = await sampleFullForward(m, PROMPTS, options);
      expect(cached.map((r) => r.tokens)).toEqual(full.map((r) => r.tokens));
      cached.forEach((row, b) =>
        row.logProbs.forEach((lp, i) => expect(Math.abs(lp - full[b]!.logProbs[i]!)).toBeLessThan(1e-4)),
      );
    },
  );

  it.each(['learned', 'rope'] as const)(
    'treats each row as if it were alone in the batch (%s positions)',
    async (positions) => {
      const options = { ...base, temperature: 0 };
      const m = positions === 'rope' ? sharpRope : sharp;
      const batched = await sample(m, PROMPTS, options);
      for (const [b, prompt] of PROMPTS.entries()) {
        const [alone] = await sample(m, [prompt], options);
        expect(alone!.tokens).toEqual(batched[b]!.tokens);
      }
    },
  );

  it('stops a row at EOS (included) and others at maxNewTokens or the context length', async () => {
    const greedy = { ...base, temperature: 0, maxNewTokens: 6 };
    const reference = await sample(sharp, PROMPTS, greedy);
    const eosId = reference[1]!.tokens[2]!;
    const rows = await sample(sharp, PROMPTS, { ...greedy, eosId });
    rows.forEach((row, b) => {
      const stop = reference[b]!.tokens.indexOf(eosId);
      if (stop === -1) {
        expect(row).toMatchObject({ finishReason: 'length', tokens: reference[b]!.tokens });
      } else {
        expect(row).toMatchObject({ finishReason: 'eos', tokens: reference[b]!.tokens.slice(0, stop + 1) });
      }
    });
    expect(rows[1]!.finishReason).toBe('eos');
    const long = Array.from({ length: TINY.contextLength - 2 }, (_, i) => (i % 20) + 2);
    const [capped, short] = await sample(sharp, [long, [5]], greedy);
    expect(capped).toMatchObject({ finishReason: 'length' });
    expect(capped!.tokens).toHaveLength(2);
    expect(short!.tokens).toHaveLength(6);
  });

  it('samples more prompts than maxRows in runs: the first run as one call would, the others seeded apart', async () => {
    const prompts = [...PROMPTS, ...PROMPTS, ...PROMPTS];
    const maxRows = PROMPTS.length;
    const runs = await sample(model, prompts, { ...base, maxRows });
    expect(runs).toHaveLength(prompts.length);
    // Run 0 is what sampling its rows alone gives (same seed); the same prompts in runs 1 and 2 are
    // drawn with other seeds, so the three copies do not repeat one another.
    expect(runs.slice(0, maxRows)).toEqual(await sample(model, PROMPTS, base));
    const copies = [0, 1, 2].map((r) => JSON.stringify(runs.slice(r * maxRows, (r + 1) * maxRows)));
    expect(new Set(copies).size).toBe(3);
    // Greedy decoding does not depend on the seed: every run gives the one-call result.
    const greedy = { ...base, temperature: 0 };
    expect(await sample(model, prompts, { ...greedy, maxRows: 2 })).toEqual(
      await sample(model, prompts, greedy),
    );
    await expect(sample(model, PROMPTS, { ...base, maxRows: 0 })).rejects.toThrow(
      /maxRows must be an integer > 0, got 0/,
    );
  });

  it('rejects a bad request and says what is wrong', async () => {
    await expect(sample(model, [[1, 99]], base)).rejects.toThrow(
      /prompt 0 has token 99 at position 1, outside/,
    );
    await expect(sample(model, [[1], []], base)).rejects.toThrow(/prompt 1 is empty/);
    await expect(sample(model, PROMPTS, { ...base, topP: 0 })).rejects.toThrow(/topP must be in \(0, 1\]/);
    await expect(sample(model, PROMPTS, { ...base, temperature: -1 })).rejects.toThrow(/temperature/);
  });

  it("runs a decoding step's blocks as one RxrlDecodeLayer call each, the same floats as op by op, freeing what it allocates", async () => {
    const options = { ...base, temperature: 1.2, topP: 0.9, maxNewTokens: 6, seed: 5 };
    const decodeLayers = async (fuse: boolean) => {
      GPT.fuseDecoding = fuse;
      try {
        let rows: Awaited<ReturnType<typeof sample>> = [];
        const profile = await tf.profile(async () => {
          rows = await sample(sharp, PROMPTS, options);
          return [];
        });
        return { rows, calls: profile.kernels.filter((k) => k.name === 'RxrlDecodeLayer').length };
      } finally {
        GPT.fuseDecoding = true;
      }
    };
    const byOp = await decodeLayers(false);
    const fused = await decodeLayers(true);
    expect(byOp.calls).toBe(0);
    // Every step after the prefill, every layer.
    expect(fused.calls).toBe((options.maxNewTokens - 1) * TINY.nLayers);
    expect(fused.rows).toEqual(byOp.rows);
    const backend = tf.backend() as unknown as { numDataIds(): number };
    const before = backend.numDataIds();
    await sample(sharp, PROMPTS, options);
    expect(backend.numDataIds()).toBe(before);
  });

  it('leaves no tensors behind', async () => {
    await sample(model, PROMPTS, base);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 5; i++) {
      await sample(model, PROMPTS, { ...base, seed: i, topP: 0.9 });
      await sample(model, PROMPTS, { ...base, seed: i, temperature: 0, eosId: 3 });
      await sampleFullForward(model, PROMPTS.slice(0, 2), { ...base, seed: i, maxNewTokens: 3 });
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});

/**
 * A row of log-probs from a few distinct levels, so ties at the cut-off happen (level -1 is
 * probability 0, -Infinity, which masked tokens get; one token always has some), with or without
 * top-k and top-p.
 */
const truncatedRow = fc.record({
  logProbs: fc.array(fc.integer({ min: -1, max: 5 }), { minLength: 1, maxLength: 30 }).map((levels) => {
    const weights = [...levels, 0].map((l) => (l < 0 ? 0 : 2 ** l));
    const total = weights.reduce((a, b) => a + b, 0);
    return Float32Array.from(weights, (w) => Math.log(w / total));
  }),
  topK: fc.option(fc.integer({ min: 1, max: 30 }), { nil: undefined }),
  topP: fc.option(fc.double({ min: 0.05, max: 1, noNaN: true }), { nil: undefined }),
});

describe('truncatedSupport', () => {
  it('refuses NaN log-probs, with or without truncation, saying the logits are not finite', () => {
    const logProbs = Float32Array.from([-1, NaN, -2, -0.5]);
    for (const options of [{}, { topP: 0.9 }, { topK: 2 }])
      expect(() => drawToken(logProbs, options, () => 0.3)).toThrow(
        /sample: a next-token distribution has NaN log-probs: the policy's logits are not finite/,
      );
  });

  it('keeps the top k, then the fewest most likely of them reaching mass p of theirs, ties by lowest id', () => {
    // Top-p applies to the top-k renormalised (Hugging Face's TopK then TopP warpers, vLLM): 0.4 / 0.7 >= 0.5.
    expect(
      truncatedSupport(Float32Array.from([0.4, 0.3, 0.2, 0.1].map(Math.log)), { topK: 2, topP: 0.5 }),
    ).toEqual([0]);
    fc.assert(
      fc.property(truncatedRow, ({ logProbs, topK, topP }) => {
        // The definition, by sorting the ids with a comparator.
        const ids = Array.from(logProbs.keys()).sort((a, b) => logProbs[b]! - logProbs[a]! || a - b);
        let keep = topK !== undefined && topK < ids.length ? topK : ids.length;
        if (topP !== undefined && topP < 1) {
          const kept = ids.slice(0, keep).reduce((sum, id) => sum + Math.exp(logProbs[id]!), 0);
          let mass = 0;
          for (let n = 0; n < keep; n++) {
            mass += Math.exp(logProbs[ids[n]!]!);
            if (mass >= topP * (keep < ids.length ? kept : 1)) {
              keep = n + 1;
              break;
            }
          }
        }
        const expected = ids.slice(0, keep).sort((a, b) => a - b);
        expect(truncatedSupport(logProbs, { topK, topP })).toEqual(expected);
      }),
      { numRuns: 300 },
    );
  });

  it("drawToken draws from truncatedSupport's ids, renormalised, the same token for the same uniform", () => {
    fc.assert(
      fc.property(truncatedRow, ({ logProbs, topK, topP }) => {
        const ids = truncatedSupport(logProbs, { topK, topP });
        const mass = ids.reduce((m, i) => m + Math.exp(logProbs[i]!), 0);
        // Uniform draws across [0, 1): each must pick the first id of the support whose
        // cumulative mass passes draw * its mass.
        for (let step = 0; step < 64; step++) {
          const draw = step / 64;
          let cumulative = 0;
          const expected =
            ids.find((i) => draw * mass < (cumulative += Math.exp(logProbs[i]!))) ?? ids.at(-1);
          expect(drawToken(logProbs, { topK, topP }, () => draw)).toBe(expected);
        }
      }),
      { numRuns: 300 },
    );
  });
});
