import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { SftTrainer, type SftExample } from '../learner/sft.ts';
import type { Metrics } from '../metrics/metrics.ts';
import { withBackendThreads } from '../policy/backend.ts';
import { isCheckpoint, loadCheckpoint, removeCheckpoint, saveCheckpoint } from '../policy/checkpoint.ts';
import { GPT, type GPTConfig } from '../policy/gpt.ts';
import type { Tokenizer } from '../policy/tokenizer.ts';
import { seededUniform } from '../random.ts';
import { CORPUS_REVISION } from '../tasks/corpus.ts';
import type { Topology } from '../topology/topology.ts';
import type { TaskRuntime } from './taskRuntime.ts';

export interface BaseModel {
  model: GPT;
  dir: string;
  /** True when it was read from the cache rather than trained now. */
  cached: boolean;
}

export function modelConfig(topology: Topology, tokenizer: Tokenizer): GPTConfig {
  return { ...topology.model, vocabSize: tokenizer.vocabSize, seed: topology.seed };
}

/**
 * The cache key of a base model: a hash of everything that shapes it (model, pretraining and corpus
 * settings, task, the number of training questions, template, seed, tokenizer, the corpus generator's
 * revision). Settings left unset are
 * absent from it, so an optional setting added later keeps the keys, and the cached models, of the
 * pipelines that do not use it.
 */
export function baseModelKey(topology: Topology, tokenizer: Tokenizer): string {
  return createHash('sha256')
    .update(
      JSON.stringify([
        modelConfig(topology, tokenizer),
        topology.pretrain,
        topology.task,
        // Pretraining draws its rows from the training questions: how many there are shapes the weights.
        topology.data.trainPrompts,
        topology.template,
        topology.seed,
        tokenizer.spec(),
        ...(CORPUS_REVISION[topology.task.kind] ? [CORPUS_REVISION[topology.task.kind]] : []),
      ]),
    )
    .digest('hex')
    .slice(0, 12);
}

/**
 * The base model R1-Zero starts from: next-token training on the task's noisy synthetic corpus
 * (src/tasks/corpus.ts), cached on disk under a hash of everything that shapes it, so later runs
 * reuse it.
 */
export async function ensureBaseModel(options: {
  topology: Topology;
  runtime: TaskRuntime;
  tokenizer: Tokenizer;
  cacheDir: string;
  metrics?: Metrics;
  onStep?: (step: number, total: number, loss: number) => void;
  /** Save progress every this many steps, to resume an interrupted pretraining (default 100; 0: never). */
  checkpointEvery?: number;
  /**
   * Threads for its matmuls (setBackendThreads; default every core: pretraining runs before this
   * process's workers start). The weights do not depend on it.
   */
  threads?: number;
}): Promise<BaseModel> {
  const { topology, runtime, tokenizer } = options;
  const config = modelConfig(topology, tokenizer);
  const key = baseModelKey(topology, tokenizer);
  // The name only labels the directory: another pipeline's base model with the same key is the same model.
  const dir = join(options.cacheDir, `${topology.name}-${key}`);
  const same = existsSync(options.cacheDir)
    ? readdirSync(options.cacheDir)
        .filter((name) => name.endsWith(`-${key}`))
        .map((name) => join(options.cacheDir, name))
    : [];
  const cached = [dir, ...same].find((d) => isCheckpoint(d));
  if (cached) return { model: (await loadCheckpoint(cached)).model, dir: cached, cached: true };
  const corpus = runtime.corpusCompletion;
  if (!corpus && topology.pretrain.steps > 0) {
    const only =
      topology.task.kind === 'arithmetic' ? ' (its corpus writes addition alone: task.operations ["+"])' : '';
    throw new Error(
      `pretrain: the ${runtime.name} task has no pretraining corpus${only}; set pretrain.steps to 0`,
    );
  }
  // Progress is saved beside the cache entry every `checkpointEvery` steps, so a pretraining stopped
  // part-way (Ctrl-C, a machine's time running out) goes on from there: the same weights, optimiser
  // state and learning-rate schedule, and the same rows, as a run that was never stopped.
  const partialDir = `${dir}.partial`;
  const saved = isCheckpoint(partialDir) ? await loadCheckpoint(partialDir) : undefined;
  const model = saved?.model ?? new GPT(config);
  const trainer = new SftTrainer(
    model,
    {
      learningRate: {
        peak: topology.pretrain.learningRate,
        warmupSteps: 20,
        decay: 'cosine',
        totalSteps: topology.pretrain.steps,
        min: topology.pretrain.learningRate / 10,
      },
    },
    { ...(options.metrics ? { metrics: options.metrics } : {}), metricPrefix: 'pretrain' },
  );
  if (saved) {
    trainer.resume(saved.optimizer);
    tf.dispose([...saved.optimizer.values()]);
  }
  const rand = seededUniform(topology.seed + 1);
  const drill = topology.pretrain.drill ?? 0;
  const rows = (): SftExample[] =>
    Array.from({ length: topology.pretrain.batchSize }, () => {
      const example = runtime.train[Math.floor(rand() * runtime.train.length)]!;
      const prompt = tokenizer.encode(runtime.prompt(example).text);
      // Drawn only when the corpus has drill, so the rows of a corpus without it stay as they were.
      if (drill > 0 && rand() < drill) {
        // A chunk of text filling the row, like a pretraining row: no EOS. Each special tag is one
        // token but several characters, so the character budget is an upper bound on the tokens.
        const text = runtime.drillDocument!(example, rand, config.contextLength - prompt.length);
        return { tokens: [...prompt, ...tokenizer.encode(text)], lossStart: prompt.length };
      }
      const completion = tokenizer.encode(corpus!(example, rand));
      const tokens = [...prompt, ...completion, tokenizer.eosId];
      if (tokens.length > config.contextLength)
        throw new Error(
          `pretrain: a corpus document and its prompt take ${tokens.length} tokens, more than model.contextLength ` +
            `(${config.contextLength}): raise model.contextLength, or shorten the documents (pretrain.attempts, ` +
            "the task's digits or numbers)",
        );
      return { tokens, lossStart: prompt.length };
    });
  const every = options.checkpointEvery ?? 100;
  await withBackendThreads(options.threads ?? availableParallelism(), async () => {
    for (let step = 1; step <= topology.pretrain.steps; step++) {
      const batch = rows();
      // A resumed run draws the rows of the steps it has trained again, to go on with the same ones.
      if (step <= trainer.step) continue;
      const loss = trainer.train(batch);
      options.onStep?.(step, topology.pretrain.steps, loss);
      if (every > 0 && step % every === 0 && step < topology.pretrain.steps) {
        // The step it resumes from is the optimiser's own step count (adam.t).
        await trainer.optimizer.withState((optimizer) =>
          saveCheckpoint(partialDir, {
            model,
            tokenizer,
            policyVersion: 0,
            optimizer,
            metadata: { stage: 'pretrain (partial)', topology: topology.name },
          }),
        );
      }
    }
  });
  trainer.dispose();
  await saveCheckpoint(dir, {
    model,
    tokenizer,
    policyVersion: 0,
    metadata: { stage: 'pretrain', topology: topology.name },
  });
  await removeCheckpoint(partialDir);
  return { model, dir, cached: false };
}
