// The learner: the policy being trained, on its own thread; returns new weights after each batch.
import { parentPort } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs';
import { Learner } from '../../learner/learner.ts';
import { selectBackend, setBackendThreads } from '../../policy/backend.ts';
import { loadCheckpoint, saveCheckpoint } from '../../policy/checkpoint.ts';
import { GPT } from '../../policy/gpt.ts';
import { tokenizerFromSpec, type Tokenizer } from '../../policy/tokenizer.ts';
import type { LearnerReply, LearnerRequest } from './protocol.ts';
import { serve } from './rpc.ts';
import { buffersOf, exportWeights, importWeights } from './weights.ts';

let learner: Learner | undefined;
let tokenizer: Tokenizer | undefined;

await serve<LearnerRequest>(
  parentPort!,
  async (request): Promise<{ reply: LearnerReply; transfer?: ArrayBuffer[] }> => {
    switch (request.type) {
      case 'init': {
        const backend = await selectBackend(request.backend);
        const threads = await setBackendThreads(request.threads ?? 1);
        tokenizer = tokenizerFromSpec(request.tokenizer);
        if (request.checkpoint) {
          const ckpt = await loadCheckpoint(request.checkpoint);
          learner = new Learner(ckpt.model, request.config, { initialVersion: ckpt.policyVersion });
          if (ckpt.optimizer.size > 0) learner.loadState(ckpt.optimizer);
          tf.dispose([...ckpt.optimizer.values()]);
        } else {
          const model = new GPT(request.model);
          importWeights(model, request.weights);
          learner = new Learner(model, request.config, { initialVersion: request.version });
        }
        return { reply: { type: 'ready', backend, version: learner.version, threads } };
      }
      case 'train': {
        const reports = learner!.train(request.batch);
        const weights = exportWeights(learner!.model);
        return {
          reply: { type: 'trained', reports, version: learner!.version, weights },
          transfer: buffersOf(weights),
        };
      }
      case 'save': {
        await learner!.withState((optimizer) =>
          saveCheckpoint(request.dir, {
            model: learner!.model,
            tokenizer: tokenizer!,
            policyVersion: learner!.version,
            optimizer,
            metadata: request.metadata,
          }),
        );
        return { reply: { type: 'saved' } };
      }
    }
  },
);
