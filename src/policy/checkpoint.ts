/**
 * Saves and loads a policy: weights, optional optimiser state, model config, tokenizer spec and
 * policy version, in one directory written atomically.
 *
 * Format (formatVersion 1), two files:
 *   manifest.json  { format, formatVersion, policyVersion, model: GPTConfig, tokenizer: TokenizerSpec,
 *                    tensors: [{ name, group: 'model' | 'optimizer', shape, offset }], metadata? }
 *   tensors.bin    the tensors back to back as little-endian float32, in manifest order; `offset`
 *                  counts floats from the start of the file, the length is the product of `shape`.
 *
 * The 'optimizer' group is the learner's training state (Learner.withState): AdamW's moments
 * (`adam.m/<param>`, `adam.v/<param>`) and step count (`adam.t`), and, when the loss has a KL term,
 * the frozen reference policy's weights (`reference/<param>`).
 *
 * Atomic: everything is written and fsynced in a temporary directory beside the target, then
 * renamed onto it, so a reader never sees a half-written checkpoint. An existing checkpoint at
 * the target is first renamed aside (`<dir>.old-*`) and deleted after the swap. A process stopped
 * between those two renames leaves no checkpoint at the target: readers then take the one renamed
 * aside (the save had not happened, so the previous checkpoint is the one that stands, consistent
 * with whatever was written after it), and the next save clears what the stopped one left.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { GPT, GPTConfig } from './gpt.ts';
import { TokenizerSpec, tokenizerFromSpec, type Tokenizer } from './tokenizer.ts';

const MANIFEST = 'manifest.json';
const TENSORS = 'tensors.bin';

const TensorEntry = z
  .object({
    name: z.string().min(1),
    group: z.enum(['model', 'optimizer']),
    shape: z.array(z.int().nonnegative()),
    offset: z.int().nonnegative(),
  })
  .strict();

export const CheckpointManifest = z
  .object({
    format: z.literal('rxrl-policy'),
    formatVersion: z.literal(1),
    policyVersion: z.int().nonnegative(),
    model: GPTConfig,
    tokenizer: TokenizerSpec,
    tensors: z.array(TensorEntry),
    metadata: z.record(z.string(), z.unknown()).optional(),
  })
  .strict();
export type CheckpointManifest = z.infer<typeof CheckpointManifest>;

export interface Checkpoint {
  model: GPT;
  tokenizer: Tokenizer;
  policyVersion: number;
  /** Optimiser state by name (e.g. Adam moments), float32; empty when none was saved. */
  optimizer: ReadonlyMap<string, tf.Tensor>;
  /** Free-form JSON saved with the checkpoint (e.g. step, consumed batch ids). */
  metadata?: Record<string, unknown>;
}

/** Writes `checkpoint` to directory `dir` atomically, replacing what was there. */
export async function saveCheckpoint(
  dir: string,
  checkpoint: Omit<Checkpoint, 'optimizer'> & { optimizer?: ReadonlyMap<string, tf.Tensor> },
): Promise<void> {
  const target = path.resolve(dir);
  if (checkpoint.tokenizer.vocabSize > checkpoint.model.config.vocabSize) {
    throw new Error(
      `saveCheckpoint: the tokenizer has ${checkpoint.tokenizer.vocabSize} tokens but the model only ` +
        `${checkpoint.model.config.vocabSize}`,
    );
  }
  const groups = [
    ['model', checkpoint.model.params],
    ['optimizer', checkpoint.optimizer ?? new Map<string, tf.Tensor>()],
  ] as const;
  const tensors: z.infer<typeof TensorEntry>[] = [];
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [group, named] of groups) {
    for (const [name, tensor] of named) {
      if (tensor.dtype !== 'float32') {
        throw new Error(`saveCheckpoint: ${group} tensor ${name} is ${tensor.dtype}; only float32 is stored`);
      }
      const data = (await tensor.data()) as Float32Array;
      tensors.push({ name, group, shape: tensor.shape, offset });
      chunks.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      offset += data.length;
    }
  }
  const manifest: CheckpointManifest = {
    format: 'rxrl-policy',
    formatVersion: 1,
    policyVersion: checkpoint.policyVersion,
    model: { ...checkpoint.model.config },
    tokenizer: checkpoint.tokenizer.spec(),
    tensors,
    ...(checkpoint.metadata ? { metadata: checkpoint.metadata } : {}),
  };

  await mkdir(path.dirname(target), { recursive: true });
  const temporary = siblingName(target, 'tmp');
  // This save's directories: its temporary one, and each it renames the target aside to (swapIn).
  const own = [temporary];
  for (const dir of own) inFlight.add(dir);
  await mkdir(temporary);
  try {
    await writeDurably(path.join(temporary, TENSORS), Buffer.concat(chunks));
    await writeDurably(path.join(temporary, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
    await syncDirectory(temporary);
    await swapIn(temporary, target, own);
    await syncDirectory(path.dirname(target));
    await Promise.all(own.slice(1).map((dir) => rm(dir, { recursive: true, force: true })));
  } catch (error) {
    // The target renamed aside stays if the swap failed: readers take it, the next save clears it.
    await rm(temporary, { recursive: true, force: true });
    throw error;
  } finally {
    for (const dir of own) inFlight.delete(dir);
  }
  // What a save stopped part-way left beside the target (this one's own are gone by now).
  await Promise.all(leftBeside(target).map((d) => rm(d, { recursive: true, force: true })));
}

/**
 * The directories this process's saves are writing or have renamed aside and not yet removed: another
 * save of the same target in this process leaves them alone (those of processes that are gone, it clears).
 */
const inFlight = new Set<string>();

/** The error code of a failed fs call (ENOENT, ENOTEMPTY, ...). */
const codeOf = (error: unknown): string | undefined => (error as { code?: string }).code;

/**
 * Puts the directory `temporary` where `target` is, the target there before renamed aside to a name it
 * adds to `asides` (and to inFlight) first, for the caller to remove and forget. Another process saving the same target at the
 * same moment (two runs pretraining the same cached base model) can put its own target back between
 * the two renames (the second rename then fails with ENOTEMPTY or EEXIST) or move it away before the
 * first (ENOENT): each time the swap starts over, a few times, so both saves succeed, the later one's
 * directory staying.
 */
async function swapIn(temporary: string, target: string, asides: string[]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      if (await exists(target)) {
        const aside = siblingName(target, 'old');
        asides.push(aside);
        inFlight.add(aside);
        await rename(target, aside);
      }
      await rename(temporary, target);
      return;
    } catch (error) {
      const code = codeOf(error);
      if (attempt < 8 && (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOENT')) continue;
      throw error;
    }
  }
}

/** Removes a checkpoint directory and whatever a save of it stopped part-way left beside it. */
export async function removeCheckpoint(dir: string): Promise<void> {
  const target = path.resolve(dir);
  await Promise.all([target, ...leftBeside(target)].map((d) => rm(d, { recursive: true, force: true })));
}

/**
 * The directories a save of `target` renamed aside (`old`) or wrote in (`tmp`) and did not remove: named
 * as siblingName names them, by a process that is gone (a save in another live process, of the same
 * cached base model say, is left alone).
 */
function leftBeside(target: string, kinds: readonly ('old' | 'tmp')[] = ['old', 'tmp']): string[] {
  const parent = path.dirname(target);
  const base = path.basename(target).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const pattern = new RegExp(`^${base}\\.(${kinds.join('|')})-(\\d+)-[0-9a-f]{8}$`);
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return [];
  }
  return names
    .filter((name) => {
      const m = pattern.exec(name);
      return m !== null && !alive(Number(m[2])) && !inFlight.has(path.join(parent, name));
    })
    .map((name) => path.join(parent, name));
}

/** Whether another process with this pid is running (this one's own saves are finished when asked). */
function alive(pid: number): boolean {
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Where `dir`'s checkpoint is: `dir`, or where a save stopped between its two renames left the
 * previous checkpoint (the newest complete `<dir>.old-*`); undefined when there is none.
 */
export function checkpointAt(dir: string): string | undefined {
  if (existsSync(path.join(dir, MANIFEST))) return dir;
  const aside = leftBeside(path.resolve(dir), ['old']).filter((d) => existsSync(path.join(d, MANIFEST)));
  return aside.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
}

/** Whether `dir` holds a checkpoint (saveCheckpoint writes its manifest last; see checkpointAt). */
export function isCheckpoint(dir: string): boolean {
  return checkpointAt(dir) !== undefined;
}

/** A checkpoint's contents as plain arrays, read without tfjs (see readCheckpoint). */
export interface CheckpointArrays {
  manifest: z.infer<typeof CheckpointManifest>;
  /** The model's parameters by name. */
  model: Map<string, Float32Array>;
  /** The optimiser's state by name, with shapes. */
  optimizer: Map<string, { values: Float32Array; shape: number[] }>;
}

/**
 * Reads a checkpoint written by `saveCheckpoint` as arrays, touching no tfjs backend: for a process that
 * only hands the weights on (to a worker), where building a model would start a backend for nothing.
 */
export async function readCheckpoint(at: string): Promise<CheckpointArrays> {
  const dir = checkpointAt(at) ?? at;
  const manifestPath = path.join(dir, MANIFEST);
  let json: unknown;
  try {
    json = JSON.parse(await readFile(manifestPath, 'utf8'));
  } catch (error) {
    throw new Error(`loadCheckpoint: cannot read ${manifestPath}: ${(error as Error).message}`);
  }
  const parsed = CheckpointManifest.safeParse(json);
  if (!parsed.success)
    throw new Error(`loadCheckpoint: ${manifestPath} is invalid: ${z.prettifyError(parsed.error)}`);
  const manifest = parsed.data;

  const bytes = await readFile(path.join(dir, TENSORS));
  if (bytes.byteLength % 4 !== 0)
    throw new Error(`loadCheckpoint: ${TENSORS} in ${dir} is not whole float32s`);
  // Float32Array needs a 4-byte aligned offset, which a pooled Buffer may not have.
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : new Uint8Array(bytes);
  const floats = new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4);
  const model = new Map<string, Float32Array>();
  const optimizer = new Map<string, { values: Float32Array; shape: number[] }>();
  for (const { name, group, shape, offset } of manifest.tensors) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (offset + size > floats.length) {
      throw new Error(`loadCheckpoint: ${TENSORS} in ${dir} is truncated (${name} ends past its end)`);
    }
    // slice copies: the arrays must not alias the file buffer (and may be transferred).
    const values = floats.slice(offset, offset + size);
    if (group === 'model') model.set(name, values);
    else optimizer.set(name, { values, shape });
  }
  return { manifest, model, optimizer };
}

/** Reads a checkpoint written by `saveCheckpoint` into a new model on the current backend. */
export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  const { manifest, model: arrays, optimizer: state } = await readCheckpoint(dir);
  const optimizer = new Map<string, tf.Tensor>();
  for (const [name, { values, shape }] of state) optimizer.set(name, tf.tensor(values, shape, 'float32'));
  const model = new GPT(manifest.model);
  try {
    model.assignWeights(arrays);
  } catch (error) {
    model.dispose();
    tf.dispose([...optimizer.values()]);
    throw new Error(`loadCheckpoint: ${dir} does not match its model config: ${(error as Error).message}`);
  }
  return {
    model,
    tokenizer: tokenizerFromSpec(manifest.tokenizer),
    policyVersion: manifest.policyVersion,
    optimizer,
    ...(manifest.metadata ? { metadata: manifest.metadata } : {}),
  };
}

function siblingName(target: string, kind: string): string {
  return `${target}.${kind}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

async function writeDurably(file: string, data: Buffer | string): Promise<void> {
  const handle = await open(file, 'wx');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
