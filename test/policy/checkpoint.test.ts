import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isCheckpoint, loadCheckpoint, saveCheckpoint } from '../../src/policy/checkpoint.ts';
import type { GPT } from '../../src/policy/gpt.ts';
import { CharTokenizer } from '../../src/policy/tokenizer.ts';
import { PROMPTS, tinyModel, useWasm } from './helpers.ts';

let root: string;
beforeAll(async () => {
  await useWasm();
  root = await mkdtemp(path.join(tmpdir(), 'rxrl-checkpoint-'));
});
afterAll(() => rm(root, { recursive: true, force: true }));

const tokenizer = new CharTokenizer('0123456789+-*/=( ');

function logProbs(model: GPT): number[][] {
  return tf.tidy(() => {
    const ids = tf.tensor2d([[...PROMPTS[1]!, 1]], undefined, 'int32');
    return model.sequenceLogProbs(ids, tf.onesLike(ids).cast('float32') as tf.Tensor2D, 0.8).arraySync();
  });
}

describe('checkpoint', () => {
  it('round-trips weights, optimiser state, tokenizer, version and metadata', async () => {
    const model = tinyModel(21, 3);
    const moment = tf.tensor2d([
      [1.5, -2],
      [0, 3.25],
    ]);
    const own = path.join(root, 'round-trip'); // this test's alone: it checks nothing else is left there
    const dir = path.join(own, 'v7');
    await saveCheckpoint(dir, {
      model,
      tokenizer,
      policyVersion: 7,
      optimizer: new Map([['adam.m.head', moment]]),
      metadata: { step: 7, consumedBatches: ['b1'] },
    });
    const loaded = await loadCheckpoint(dir);
    expect(loaded.policyVersion).toBe(7);
    expect(loaded.metadata).toEqual({ step: 7, consumedBatches: ['b1'] });
    expect(loaded.model.config).toEqual(model.config);
    expect(loaded.tokenizer.spec()).toEqual(tokenizer.spec());
    expect(loaded.tokenizer.encode('12+3')).toEqual(tokenizer.encode('12+3'));
    expect(loaded.optimizer.get('adam.m.head')!.arraySync()).toEqual(moment.arraySync());
    expect(logProbs(loaded.model)).toEqual(logProbs(model));
    expect(await readdir(own)).toEqual(['v7']);
    expect((await readdir(dir)).sort()).toEqual(['manifest.json', 'tensors.bin']);
    [model, loaded.model].forEach((m) => m.dispose());
  });

  it('replaces an existing checkpoint atomically and leaves no temporary directories', async () => {
    const dir = path.join(root, 'latest');
    const [first, second] = [tinyModel(31), tinyModel(32)];
    await saveCheckpoint(dir, { model: first, tokenizer, policyVersion: 1 });
    await saveCheckpoint(dir, { model: second, tokenizer, policyVersion: 2 });
    const loaded = await loadCheckpoint(dir);
    expect(loaded.policyVersion).toBe(2);
    expect(logProbs(loaded.model)).toEqual(logProbs(second));
    expect((await readdir(root)).filter((name) => name.startsWith('latest'))).toEqual(['latest']);
    [first, second, loaded.model].forEach((m) => m.dispose());
  });

  it('a save stopped between its two renames: readers take the previous checkpoint, the next save clears the rest', async () => {
    const own = path.join(root, 'interrupted');
    const dir = path.join(own, 'checkpoint');
    const [first, second, third] = [tinyModel(41), tinyModel(42), tinyModel(43)];
    await saveCheckpoint(dir, { model: first, tokenizer, policyVersion: 1 });
    // What saveCheckpoint leaves when stopped after renaming the old checkpoint aside and before
    // renaming the new one (complete, in its temporary directory) into place.
    await saveCheckpoint(path.join(own, 'staged'), { model: second, tokenizer, policyVersion: 2 });
    await rename(dir, `${dir}.old-999999999-0a0b0c0d`);
    await rename(path.join(own, 'staged'), `${dir}.tmp-999999999-0e0f0a0b`);

    expect(isCheckpoint(dir)).toBe(true);
    const standing = await loadCheckpoint(dir);
    expect(standing.policyVersion).toBe(1);
    expect(logProbs(standing.model)).toEqual(logProbs(first));

    // Left alone: a directory of one's own that merely starts alike, and a save in a live process.
    await mkdir(`${dir}.old-good`);
    await mkdir(`${dir}.tmp-${process.ppid}-0c0d0e0f`);
    await saveCheckpoint(dir, { model: third, tokenizer, policyVersion: 3 });
    expect((await readdir(own)).sort()).toEqual([
      'checkpoint',
      'checkpoint.old-good',
      `checkpoint.tmp-${process.ppid}-0c0d0e0f`,
    ]);
    expect((await loadCheckpoint(dir)).policyVersion).toBe(3);
    expect(isCheckpoint(path.join(own, 'nothing'))).toBe(false);
    [first, second, third, standing.model].forEach((m) => m.dispose());
  });

  it('saves of one directory at the same moment all succeed, and one whole checkpoint stands', async () => {
    // Two runs pretraining the same cached base model save it at the same moments.
    const own = path.join(root, 'together');
    const dir = path.join(own, 'base');
    const models = [51, 52, 53, 54, 55, 56].map((seed) => tinyModel(seed));
    await Promise.all(models.map((model, i) => saveCheckpoint(dir, { model, tokenizer, policyVersion: i })));
    const loaded = await loadCheckpoint(dir);
    expect(logProbs(loaded.model)).toEqual(logProbs(models[loaded.policyVersion]!));
    expect(await readdir(own)).toEqual(['base']);
    [...models, loaded.model].forEach((m) => m.dispose());
  });

  it('rejects a damaged checkpoint with the reason', async () => {
    const dir = path.join(root, 'damaged');
    const model = tinyModel(41);
    await saveCheckpoint(dir, { model, tokenizer, policyVersion: 0 });
    const bin = path.join(dir, 'tensors.bin');
    await writeFile(bin, (await readFile(bin)).subarray(0, 1000));
    await expect(loadCheckpoint(dir)).rejects.toThrow(/tensors.bin .* is truncated/);
    await writeFile(path.join(dir, 'manifest.json'), '{"format":"other"}');
    await expect(loadCheckpoint(dir)).rejects.toThrow(/manifest.json is invalid/);
    await expect(loadCheckpoint(path.join(root, 'absent'))).rejects.toThrow(/cannot read/);
    model.dispose();
  });
});
