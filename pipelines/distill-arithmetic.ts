import { defineRecipe } from '../src/recipe/recipe.ts';
import r1 from './r1-arithmetic.ts';

/**
 * Distillation (DeepSeek-R1 §2.4) in miniature: the r1-arithmetic recipe's final policy writes traces,
 * rejection sampling keeps the correct, readable ones, and a smaller student learns them by SFT; the same
 * student trained by RL alone from the same base is the comparison.
 */
export default defineRecipe({
  name: 'distill-arithmetic',
  description: "Teacher's accepted traces -> smaller student by SFT, vs the same student by RL alone.",
  topology: r1.topology,
  final: 'student-distilled',
  stages: [
    {
      type: 'import',
      name: 'teacher',
      checkpoint: 'runs/r1-arithmetic/final-rl/checkpoint',
      hint: 'run `rxrl run r1-arithmetic` first (or point this stage at another teacher checkpoint)',
    },
    { type: 'rejectionSample', name: 'traces', from: 'teacher', prompts: 800, k: 4 },
    { type: 'pretrain', name: 'student-base', model: { dModel: 32, nLayers: 2, nHeads: 2 } },
    {
      type: 'distill',
      name: 'student-distilled',
      teacher: 'teacher',
      student: 'student-base',
      data: ['traces'],
      steps: 100,
      batchSize: 32,
      learningRate: 2e-3,
    },
    { type: 'grpo', name: 'student-rl', from: 'student-base', steps: 40 },
    { type: 'eval', name: 'eval', checkpoints: ['teacher', 'student-distilled', 'student-rl'] },
  ],
});
