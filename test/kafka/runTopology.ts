/** The tiny topology the run-over-Kafka tests train: the shipped pipeline at d32, one layer, in seconds. */
import base from '../../pipelines/r1-zero-arithmetic.ts';
import { defineTopology } from '../../src/topology/topology.ts';

export const tiny = defineTopology({
  ...base,
  name: 'tiny-kafka',
  data: { trainPrompts: 200, testPrompts: 8 },
  model: { contextLength: 64, dModel: 32, nLayers: 1, nHeads: 2 },
  pretrain: { ...base.pretrain, steps: 30, batchSize: 16 },
  grpo: { ...base.grpo, promptsPerStep: 2, groupSize: 4, dynamicSampling: false, eta: 1 },
  sampling: { ...base.sampling, maxNewTokens: 24 },
  eval: { ...base.eval, every: 0, prompts: 4, k: 2 },
  run: { steps: 3, checkpointEvery: 1 },
});

/** So the CLI can load this file as a pipeline (`rxrl run test/kafka/runTopology.ts`). */
export default tiny;
