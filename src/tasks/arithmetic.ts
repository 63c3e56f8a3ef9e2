import type { TaskExample } from './task.ts';
import { randomInt, seededUniform } from '../random.ts';

export interface ArithmeticOptions {
  /** Digits of each operand. */
  digits: number;
  operations: ('+' | '*')[];
}

/**
 * n-digit addition and multiplication questions. The train and held-out splits are disjoint: every
 * question is assigned to a split by a hash of its problem (`a+b` and `b+a` are one problem, on one
 * side), so no seed can leak one into the other; the held-out split has each problem once.
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
  // About 1 problem in 8 is held out (splitOf); sampling without replacement stops short of exhausting a
  // split. The held-out split counts problems (both operations are commutative: about half the questions).
  const available = Math.floor(0.9 * space * (split === 'train' ? 7 / 8 : 1 / 16));
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
    const problem = `${Math.min(a, b)}${op}${Math.max(a, b)}`;
    const key = split === 'test' ? problem : question;
    if (seen.has(key) || splitOf(problem) !== split) continue;
    seen.add(key);
    out.push({
      id: `arith-${split}-${seed}-${out.length}`,
      question,
      answer: String(op === '+' ? a + b : a * b),
    });
  }
  return out;
}

/**
 * A fixed split by FNV-1a hash of a problem's canonical text (a question with its operands or numbers in
 * order, so that a reordered question lands on the same side): 1 in 8 is held out.
 */
export function splitOf(question: string): 'train' | 'test' {
  let h = 0x811c9dc5;
  for (let i = 0; i < question.length; i++) h = Math.imul(h ^ question.charCodeAt(i), 0x01000193);
  return (h >>> 0) % 8 === 0 ? 'test' : 'train';
}
