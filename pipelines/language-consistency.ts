import { defineRecipe } from '../src/recipe/recipe.ts';
import base from './r1-zero-arithmetic.ts';

/**
 * DeepSeek-R1's language-consistency reward, measured with and without. R1-Zero's chains of thought mix
 * languages; R1 adds a reward, the share of chain-of-thought words in the target language, which makes
 * them readable at a slight cost in accuracy (the paper's ablation). Here the base model learns 2-digit
 * addition from a corpus whose working is worded, each step in English or Chinese at even odds
 * ("7+8=15 carry 1,5+6+1=12 进1"), with the same noise in both languages. Two GRPO runs start from that
 * base with the same steps, seed and settings, one with accuracy + format, one with accuracy + format +
 * language consistency (English, summed in at weight 1 as the paper sums it); the eval stage reports
 * pass@1, format rate and language consistency of the base and both. The two RL stages together have
 * r1-arithmetic's pure-RL budget (70 steps): about 2 minutes on 2 cores (wasm), its base model included.
 */
// The two RL stages differ only in their rewards: same base, steps, seed and settings.
const rl = { type: 'grpo', from: 'base', steps: 35 } as const;
const ruleRewards = [
  { kind: 'accuracy', weight: 1 },
  { kind: 'format', weight: 0.2 },
] as const;

export default defineRecipe({
  name: 'language-consistency',
  description:
    'Bilingual (en/zh) worded addition: GRPO with vs without the language-consistency reward, same base, budget and seed.',
  topology: {
    ...base,
    name: 'language-consistency',
    // 500 pretraining steps, not 600: the worded documents are longer (up to 62 tokens with the prompt, not 44).
    pretrain: { ...base.pretrain, steps: 500, reasoningLanguages: { en: 0.5, zh: 0.5 } },
    // The worded working is longer: at most 38 tokens ("9+9=18 carry 1,9+9+1=19 carry 1" and the tags).
    sampling: { ...base.sampling, maxNewTokens: 40 },
    eval: { ...base.eval, every: 0 },
  },
  stages: [
    { type: 'pretrain', name: 'base' },
    { ...rl, name: 'rl', rewards: [...ruleRewards] },
    {
      ...rl,
      name: 'rl-lc',
      rewards: [...ruleRewards, { kind: 'language_consistency', language: 'en', weight: 1 }],
    },
    { type: 'eval', name: 'eval', checkpoints: ['base', 'rl', 'rl-lc'], language: 'en' },
  ],
});
