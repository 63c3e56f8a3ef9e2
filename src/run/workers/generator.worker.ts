// The rollout generator: a policy copy on its own thread, sampling G completions per prompt.
import { parentPort } from 'node:worker_threads';
import { SCHEMA_VERSION, type Rollout } from '../../../schemas/index.ts';
import { selectBackend } from '../../policy/backend.ts';
import { GPT } from '../../policy/gpt.ts';
import { sample } from '../../policy/sampler.ts';
import { tokenizerFromSpec, type Tokenizer } from '../../policy/tokenizer.ts';
import type { GeneratorReply, GeneratorRequest } from './protocol.ts';
import { serve } from './rpc.ts';
import { importWeights } from './weights.ts';

let model: GPT | undefined;
let tokenizer: Tokenizer | undefined;
let version = 0;

await serve<GeneratorRequest>(parentPort!, async (request): Promise<{ reply: GeneratorReply }> => {
  switch (request.type) {
    case 'init': {
      const backend = await selectBackend(request.backend);
      model = new GPT(request.model);
      importWeights(model, request.weights);
      tokenizer = tokenizerFromSpec(request.tokenizer);
      version = request.version;
      return { reply: { type: 'ready', backend } };
    }
    case 'weights':
      importWeights(model!, request.weights);
      version = request.version;
      return { reply: { type: 'ok' } };
    case 'generate': {
      const started = performance.now();
      const { prompts, groupSize, sampling } = request;
      const promptIds = prompts.map((p) => tokenizer!.encode(p.text));
      const rows = promptIds.flatMap((ids) => Array.from({ length: groupSize }, () => ids));
      const completions = await sample(model!, rows, {
        maxNewTokens: sampling.maxNewTokens,
        temperature: sampling.temperature,
        topP: sampling.topP,
        topK: sampling.topK,
        eosId: tokenizer!.eosId,
        padId: tokenizer!.padId,
        seed: request.seed,
      });
      let tokens = 0;
      const rollouts: Rollout[] = completions.map((c, r) => {
        const p = Math.floor(r / groupSize);
        const prompt = prompts[p]!;
        tokens += c.tokens.length;
        return {
          schemaVersion: SCHEMA_VERSION,
          id: `${prompt.id}/${r % groupSize}`,
          groupId: prompt.id,
          index: r % groupSize,
          groupSize,
          prompt,
          promptTokenIds: promptIds[p]!,
          completionTokenIds: c.tokens,
          completion: tokenizer!.decode(c.tokens),
          behaviourLogProbs: c.logProbs,
          policyVersion: version,
          finishReason: c.finishReason,
          truncatedMass: c.truncatedMass,
        };
      });
      return {
        reply: { type: 'rollouts', rollouts, tokens, seconds: (performance.now() - started) / 1000, version },
      };
    }
  }
});
