import { SftTrainer, type SftExample } from '../learner/sft.ts';
import type { Metrics } from '../metrics/metrics.ts';
import type { GPT } from '../policy/gpt.ts';
import type { Tokenizer } from '../policy/tokenizer.ts';
import { seededUniform } from '../random.ts';
import type { SftRecord } from './records.ts';

/** Tokens of a record: prompt, completion, end of sequence; the loss covers the completion and the end. */
export function recordExample(record: SftRecord, tokenizer: Tokenizer): SftExample {
  const prompt = tokenizer.encode(record.prompt);
  const completion = tokenizer.encode(record.completion);
  return { tokens: [...prompt, ...completion, tokenizer.eosId], lossStart: prompt.length };
}

/**
 * Packing (TRL's `packing=True`): examples laid end to end into rows of at most `contextLength` tokens,
 * first fit in order, the loss mask kept per example. Rows waste less compute on padding; attention is
 * causal, so a token sees the earlier examples of its row too, as in TRL's packing without position resets.
 */
export function packExamples(examples: readonly SftExample[], contextLength: number): SftExample[] {
  const rows: { tokens: number[]; mask: number[] }[] = [];
  for (const e of examples) {
    const mask = e.tokens.map((_, t) => (e.lossMask ? (e.lossMask[t] ?? 0) : t >= e.lossStart ? 1 : 0));
    const row = rows.find((r) => r.tokens.length + e.tokens.length <= contextLength);
    if (row) {
      row.tokens.push(...e.tokens);
      row.mask.push(...mask);
    } else rows.push({ tokens: [...e.tokens], mask });
  }
  return rows.map((r) => ({ tokens: r.tokens, lossStart: 0, lossMask: r.mask }));
}

/**
 * Batches of `rows` without end, epoch after epoch, each epoch in a new seeded order. A batch never
 * spans two epochs, so it never holds a row twice: an epoch's last batch holds what is left (as a
 * PyTorch DataLoader's does without drop_last).
 */
export function* epochBatches<T>(
  rows: readonly T[],
  batchSize: number,
  rand: () => number,
): Generator<T[], never> {
  for (;;) {
    const order = rows
      .map((e) => ({ e, key: rand() }))
      .sort((a, b) => a.key - b.key)
      .map((x) => x.e);
    for (let i = 0; i < order.length; i += batchSize) yield order.slice(i, i + batchSize);
  }
}

export interface SftRunResult {
  steps: number;
  trainRecords: number;
  heldOutRecords: number;
  /** Records longer than the context, left out. */
  tooLong: number;
  firstLoss: number;
  lastLoss: number;
  heldOutLossBefore: number | null;
  heldOutLossAfter: number | null;
}

/**
 * Supervised fine-tuning of `model` on records: a seeded shuffle, `heldOut` records kept aside for the
 * held-out loss before and after, batches drawn in epochs over the rest, loss on completions only.
 */
export function trainOnRecords(options: {
  model: GPT;
  tokenizer: Tokenizer;
  records: readonly SftRecord[];
  steps: number;
  batchSize: number;
  learningRate: number;
  pack: boolean;
  heldOut: number;
  seed: number;
  metrics?: Metrics;
  metricPrefix?: string;
  onStep?: (step: number, total: number, loss: number) => void;
}): SftRunResult {
  const { model, tokenizer } = options;
  const context = model.config.contextLength;
  const all = options.records.map((r) => recordExample(r, tokenizer));
  const fitting = all.filter((e) => e.tokens.length <= context);
  const rand = seededUniform(options.seed);
  const shuffled = fitting
    .map((e) => ({ e, key: rand() }))
    .sort((a, b) => a.key - b.key)
    .map((x) => x.e);
  const heldOut = shuffled.slice(0, Math.min(options.heldOut, Math.floor(shuffled.length / 2)));
  const train = shuffled.slice(heldOut.length);
  if (train.length === 0) {
    throw new Error(
      `sft: no record to train on (${all.length} records, ${all.length - fitting.length} longer than the context of ${context} tokens)`,
    );
  }
  const rows = options.pack ? packExamples(train, context) : train;
  const trainer = new SftTrainer(
    model,
    {
      learningRate: {
        peak: options.learningRate,
        warmupSteps: Math.min(10, Math.floor(options.steps / 10)),
        decay: 'cosine',
        totalSteps: options.steps,
        min: options.learningRate / 10,
      },
    },
    {
      ...(options.metrics ? { metrics: options.metrics } : {}),
      metricPrefix: options.metricPrefix ?? 'sft',
    },
  );
  /** Mean loss per token over the held-out records, batch by batch (weighted by records). */
  const evaluate = (): number | null => {
    if (heldOut.length === 0) return null;
    let sum = 0;
    for (let i = 0; i < heldOut.length; i += options.batchSize) {
      const part = heldOut.slice(i, i + options.batchSize);
      sum += trainer.evaluate(part) * part.length;
    }
    return sum / heldOut.length;
  };
  const heldOutLossBefore = evaluate();
  let firstLoss = NaN;
  let lastLoss = NaN;
  const batches = epochBatches(rows, options.batchSize, rand);
  for (let step = 1; step <= options.steps; step++) {
    lastLoss = trainer.train(batches.next().value);
    if (step === 1) firstLoss = lastLoss;
    options.onStep?.(step, options.steps, lastLoss);
  }
  const heldOutLossAfter = evaluate();
  trainer.dispose();
  return {
    steps: options.steps,
    trainRecords: train.length,
    heldOutRecords: heldOut.length,
    tooLong: all.length - fitting.length,
    firstLoss,
    lastLoss,
    heldOutLossBefore,
    heldOutLossAfter,
  };
}
