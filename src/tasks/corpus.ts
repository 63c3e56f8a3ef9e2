import { randomInt } from '../random.ts';

/**
 * The synthetic pretraining corpus that makes a base model for R1-Zero in miniature. A real base
 * model has seen the task's language with answers of mixed quality; this corpus reproduces that:
 * every document is a question in the template, a column-by-column chain of thought and an answer,
 * but the arithmetic is sloppy (each column is right with probability `columnAccuracy`, and the
 * answer follows from the columns as written) and some documents break the format. A model trained
 * on it knows the syntax and starts with a low but nonzero accuracy, which RL then raises.
 */
export interface CorpusNoise {
  /** Probability that each column of the written sum is right. */
  columnAccuracy: number;
  /** Probability that a document breaks the <think>/<answer> format. */
  brokenFormat: number;
}

export const DEFAULT_NOISE: CorpusNoise = { columnAccuracy: 0.5, brokenFormat: 0.25 };

/**
 * Column-wise addition as written by a careful (or careless) student: "7+8=15,5+6+1=12" for 57+68,
 * with the answer assembled from the columns. `slip` decides, per column, the error to make (0: none).
 */
export function additionWorking(a: number, b: number, slip: () => number): { think: string; answer: string } {
  const da = String(a).split('').reverse().map(Number);
  const db = String(b).split('').reverse().map(Number);
  const steps: string[] = [];
  const digits: number[] = [];
  let carry = 0;
  for (let i = 0; i < Math.max(da.length, db.length); i++) {
    const x = da[i] ?? 0;
    const y = db[i] ?? 0;
    const sum = Math.max(0, x + y + carry + slip());
    steps.push(`${x}+${y}${carry ? `+${carry}` : ''}=${sum}`);
    digits.push(sum % 10);
    carry = Math.floor(sum / 10);
  }
  if (carry) digits.push(carry);
  return {
    think: steps.join(','),
    answer: digits
      .reverse()
      .join('')
      .replace(/^0+(?=\d)/, ''),
  };
}

/** One pretraining document (the text after the prompt) for the question "a+b". */
export function noisyAdditionCompletion(
  a: number,
  b: number,
  rand: () => number,
  noise: CorpusNoise,
): string {
  const slip = () => (rand() < noise.columnAccuracy ? 0 : [-1, 1, -2, 2][randomInt(rand, 0, 3)]!);
  const { think, answer } = additionWorking(a, b, slip);
  if (rand() < noise.brokenFormat) {
    const broken = [
      `${think}<answer>${answer}</answer>`,
      `<think>${think}</think>${answer}`,
      `<answer>${answer}`,
    ];
    return broken[randomInt(rand, 0, broken.length - 1)]!;
  }
  return `<think>${think}</think><answer>${answer}</answer>`;
}

/** A correct, well-formatted completion: the target a perfect policy would write. */
export function correctAdditionCompletion(a: number, b: number): string {
  const { think, answer } = additionWorking(a, b, () => 0);
  return `<think>${think}</think><answer>${answer}</answer>`;
}

/** One left-to-right attempt at a Countdown question: "8+5=13,13*3=39" and the expression "(8+5)*3". */
export interface CountdownChain {
  steps: string[];
  expression: string;
  value: number;
}

const COUNTDOWN_OPS = ['+', '-', '*', '/'] as const;

/**
 * Every left-to-right chain over the numbers, each used once: ((n1 op n2) op n3) op n4, with exact integer
 * division only. Most Countdown solutions with 3-4 numbers can be written this way.
 */
export function countdownChains(numbers: readonly number[]): CountdownChain[] {
  const out: CountdownChain[] = [];
  const extend = (chain: CountdownChain, rest: number[]): void => {
    if (rest.length === 0) {
      out.push(chain);
      return;
    }
    rest.forEach((n, i) => {
      const others = rest.filter((_, j) => j !== i);
      for (const op of COUNTDOWN_OPS) {
        const v = chain.value;
        if (op === '/' && (n === 0 || v % n !== 0)) continue;
        const value = op === '+' ? v + n : op === '-' ? v - n : op === '*' ? v * n : v / n;
        const expression =
          chain.steps.length === 0 ? `${chain.expression}${op}${n}` : `(${chain.expression})${op}${n}`;
        extend({ steps: [...chain.steps, `${v}${op}${n}=${value}`], expression, value }, others);
      }
    });
  };
  numbers.forEach((n, i) =>
    extend(
      { steps: [], expression: String(n), value: n },
      numbers.filter((_, j) => j !== i),
    ),
  );
  return out;
}

export interface CountdownNoise {
  /** Probability that a document's attempt reaches the target (when a left-to-right chain can). */
  solveRate: number;
  /** Probability that a document breaks the <think>/<answer> format. */
  brokenFormat: number;
}

/**
 * A Countdown pretraining document: one attempt written out step by step, with the arithmetic done right
 * but the choice of numbers and operations usually wrong. With probability `solveRate` the attempt is one
 * that reaches the target, so the base model has seen the target reached often enough to do it
 * sometimes; RL then has to make it do so on purpose.
 */
export function noisyCountdownCompletion(
  numbers: readonly number[],
  target: number,
  rand: () => number,
  noise: CountdownNoise,
): string {
  const chains = countdownChains(numbers);
  const solving = chains.filter((c) => c.value === target);
  const pool = solving.length > 0 && rand() < noise.solveRate ? solving : chains;
  const chain = pool[randomInt(rand, 0, pool.length - 1)]!;
  const think = chain.steps.join(',');
  if (rand() < noise.brokenFormat) {
    const broken = [
      `${think}<answer>${chain.expression}</answer>`,
      `<think>${think}</think>${chain.expression}`,
    ];
    return broken[randomInt(rand, 0, broken.length - 1)]!;
  }
  return `<think>${think}</think><answer>${chain.expression}</answer>`;
}
