import type { CountdownAnswer } from '../rewards/rewards.ts';
import { randomInt, seededUniform } from '../random.ts';
import { splitOf } from './arithmetic.ts';
import type { TaskExample } from './task.ts';

export interface CountdownOptions {
  /** How many numbers (TinyZero: 3 or 4). */
  numbers: 3 | 4;
  maxNumber: number;
}

/** Every value reachable from the numbers using each exactly once with + - * / (exact, integer results). */
function reachable(nums: number[]): Map<number, string> {
  if (nums.length === 1) return new Map([[nums[0]!, String(nums[0])]]);
  const out = new Map<number, string>();
  for (let i = 0; i < nums.length; i++) {
    for (let j = 0; j < nums.length; j++) {
      if (i === j) continue;
      const rest = nums.filter((_, k) => k !== i && k !== j);
      const [a, b] = [nums[i]!, nums[j]!];
      const options: [number, string][] = [
        [a + b, '+'],
        [a - b, '-'],
        [a * b, '*'],
      ];
      if (b !== 0 && a % b === 0) options.push([a / b, '/']);
      for (const [v] of options) {
        for (const [value, expr] of reachable([v, ...rest])) {
          if (!out.has(value)) out.set(value, expr);
        }
      }
    }
  }
  return out;
}

/**
 * Countdown as TinyZero defines it: 3-4 numbers and a target reachable by an expression that uses each
 * number exactly once with + - * /. Targets are positive, and solvable by construction.
 */
export function countdownExamples(
  split: 'train' | 'test',
  count: number,
  seed: number,
  options: CountdownOptions = { numbers: 3, maxNumber: 20 },
): TaskExample[] {
  const rand = seededUniform(seed * 2 + (split === 'train' ? 0 : 1) + 7919);
  const seen = new Set<string>();
  const out: TaskExample[] = [];
  for (let attempts = 0; out.length < count; attempts++) {
    if (attempts > count * 200)
      throw new Error(`countdown: could only make ${out.length} of ${count} questions`);
    const numbers = Array.from({ length: options.numbers }, () => randomInt(rand, 1, options.maxNumber));
    const targets = [...reachable(numbers).keys()].filter(
      (t) => t > 0 && t <= options.maxNumber * options.maxNumber,
    );
    if (targets.length === 0) continue;
    const target = targets[randomInt(rand, 0, targets.length - 1)]!;
    const question = `Using the numbers [${numbers.join(', ')}], create an equation that equals ${target}`;
    // The split goes by the problem (its numbers in order, and the target): [6, 7, 10] -> 23 and
    // [10, 6, 7] -> 23 are one problem, on one side; the held-out split has each problem once.
    const problem = `${[...numbers].sort((x, y) => x - y).join(',')}->${target}`;
    const key = split === 'test' ? problem : question;
    if (seen.has(key) || splitOf(problem) !== split) continue;
    seen.add(key);
    const answer: CountdownAnswer = { numbers, target };
    out.push({ id: `countdown-${split}-${seed}-${out.length}`, question, answer });
  }
  return out;
}
