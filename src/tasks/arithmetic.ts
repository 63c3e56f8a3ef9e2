import type { TaskExample } from './task.ts';
import { randomInt, seededUniform } from '../random.ts';

export interface ArithmeticOptions {
  /** Digits of each operand. */
  digits: number;
  operations: ('+' | '*')[];
}

/**
 * n-digit addition and multiplication questions. The train and held-out splits are disjoint: every
 * question is assigned to a split by a hash of its text, so no seed can leak one into the other.
 */
export function arithmeticExamples(
  split: 'train' | 'test',
  count: number,
  seed: number,
  options: ArithmeticOptions = { digits: 2, operations: ['+'] },
): TaskExample[] {
  const rand = seededUniform(seed * 2 + (split === 'train' ? 0 : 1));
  const lo = options.digits === 1 ? 0 : 10 ** (options.digits - 1);
  const hi = 10 ** options.digits - 1;
  const space = (hi - lo + 1) ** 2 * options.operations.length;
  // About 1 question in 8 is held out (splitOf); sampling without replacement stops short of exhausting a split.
  const available = Math.floor(0.9 * space * (split === 'train' ? 7 / 8 : 1 / 8));
  if (count > available) {
    throw new RangeError(
      `arithmetic: ${count} ${split} questions asked, at most ${available} with ${options.digits} digits`,
    );
  }
  const seen = new Set<string>();
  const out: TaskExample[] = [];
  while (out.length < count) {
    const a = randomInt(rand, lo, hi);
    const b = randomInt(rand, lo, hi);
    const op = options.operations[randomInt(rand, 0, options.operations.length - 1)]!;
    const question = `${a}${op}${b}`;
    if (seen.has(question) || splitOf(question) !== split) continue;
    seen.add(question);
    out.push({
      id: `arith-${split}-${seed}-${out.length}`,
      question,
      answer: String(op === '+' ? a + b : a * b),
    });
  }
  return out;
}

/** A fixed split by FNV-1a hash of the question text: 1 in 8 questions is held out. */
export function splitOf(question: string): 'train' | 'test' {
  let h = 0x811c9dc5;
  for (let i = 0; i < question.length; i++) h = Math.imul(h ^ question.charCodeAt(i), 0x01000193);
  return (h >>> 0) % 8 === 0 ? 'test' : 'train';
}
