import { defineTopology } from '../src/topology/topology.ts';
import base from './r1-zero-arithmetic.ts';

/**
 * r1-zero-arithmetic with the GRPO of the DeepSeek-R1 paper instead of DAPO's variant: each sequence's
 * token mean (not a token mean over the batch), a symmetric clip, a KL penalty (beta 0.001, the k3
 * estimator) to a reference refreshed every 400 optimiser steps, every group kept (no dynamic sampling),
 * and on-policy training (eta 0). The scale stays the miniature one: the same base model, learning rate,
 * group size and prompts per step, so the two pipelines differ in the algorithm only.
 */
const { name: _name, description: _description, ...rest } = base;

export default defineTopology({
  ...rest,
  name: 'r1-zero-arithmetic-paper',
  description:
    "r1-zero-arithmetic with the paper's GRPO: per-sequence mean, symmetric clip, KL 0.001, on-policy.",
  grpo: {
    ...base.grpo,
    lossAggregation: 'grpo',
    epsLow: 0.2,
    epsHigh: 0.2,
    beta: 0.001,
    klEstimator: 'k3',
    referenceRefreshEvery: 400,
    dynamicSampling: false,
    eta: 0,
  },
});
