import { defineTopology } from '../src/topology/topology.ts';
import { R1_ZERO_SHORT_TEMPLATE } from '../src/tasks/task.ts';
import arithmetic from './r1-zero-arithmetic.ts';

/**
 * R1-Zero on Countdown as TinyZero sets it (3 numbers, a target, an expression using each number once
 * with + - * /), scored 0 / 0.1 / 1. The base model is pretrained on step-by-step attempts that are
 * right in their arithmetic but mostly miss the target (src/tasks/corpus.ts); RL has to make it aim.
 */
export default defineTopology({
  name: 'r1-zero-countdown',
  description: 'Pure GRPO from a noisy base model on Countdown with 3 numbers up to 10 (TinyZero reward).',
  seed: 1,
  task: { kind: 'countdown', numbers: 3, maxNumber: 10 },
  template: R1_ZERO_SHORT_TEMPLATE,
  data: { trainPrompts: 4000, testPrompts: 128 },
  model: { contextLength: 128, dModel: 64, nLayers: 3, nHeads: 4 },
  pretrain: { steps: 600, batchSize: 32, learningRate: 3e-3, solveRate: 0.3, brokenFormat: 0.2 },
  rewards: [{ kind: 'countdown', weight: 1 }],
  // The arithmetic pipeline's GRPO, evaluation and run settings (DAPO loss, dynamic sampling, eta 2).
  grpo: arithmetic.grpo,
  sampling: { temperature: 1, topP: 1, topK: 0, maxNewTokens: 40 },
  eval: arithmetic.eval,
  run: arithmetic.run,
});
