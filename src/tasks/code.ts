import type { CodeAnswer } from '../rewards/code.ts';
import { randomInt, seededUniform } from '../random.ts';
import { splitOf } from './arithmetic.ts';
import type { TaskExample } from './task.ts';

/** A programming question with its stdin/stdout tests and a reference solution that passes them. */
export interface CodeExample extends TaskExample {
  answer: CodeAnswer;
  /** A JavaScript program that passes every test (never shown to the policy). */
  solution: string;
  /** Which kind of question (one of CODE_FAMILIES). */
  family: string;
}

/** How the integers arrive on stdin. */
const FORMATS = {
  line: {
    text: 'one line of integers separated by spaces',
    write: (xs: number[]) => `${xs.join(' ')}\n`,
    skip: 0,
  },
  counted: {
    text: 'a count n on the first line, then n integers separated by spaces on the second line',
    write: (xs: number[]) => `${xs.length}\n${xs.join(' ')}\n`,
    skip: 1,
  },
  lines: {
    text: 'integers, one per line',
    write: (xs: number[]) => `${xs.join('\n')}\n`,
    skip: 0,
  },
} as const;
type Format = keyof typeof FORMATS;

/** What the program prints: in the question's words, as expected output, and as the reference's last line. */
interface Family {
  name: string;
  /** The values of k (one question each), or [null] when the family has no parameter. */
  ks: (number | null)[];
  text(k: number): string;
  solve(xs: number[], k: number): string;
  code(k: number): string;
}

const range = (lo: number, hi: number) => Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

const FAMILIES: Family[] = [
  {
    name: 'sum',
    ks: [null],
    text: () => 'their sum',
    solve: (xs) => String(sum(xs)),
    code: () => 'console.log(nums.reduce((a, b) => a + b, 0));',
  },
  {
    name: 'max',
    ks: [null],
    text: () => 'the largest of them',
    solve: (xs) => String(Math.max(...xs)),
    code: () => 'console.log(Math.max(...nums));',
  },
  {
    name: 'min',
    ks: [null],
    text: () => 'the smallest of them',
    solve: (xs) => String(Math.min(...xs)),
    code: () => 'console.log(Math.min(...nums));',
  },
  {
    name: 'reverse',
    ks: [null],
    text: () => 'them in reverse order on one line, separated by spaces',
    solve: (xs) => [...xs].reverse().join(' '),
    code: () => "console.log(nums.reverse().join(' '));",
  },
  {
    name: 'sort',
    ks: [null],
    text: () => 'them in increasing order on one line, separated by spaces',
    solve: (xs) => [...xs].sort((a, b) => a - b).join(' '),
    code: () => "console.log(nums.sort((a, b) => a - b).join(' '));",
  },
  {
    name: 'evens',
    ks: [null],
    text: () => 'how many of them are even',
    solve: (xs) => String(xs.filter((x) => x % 2 === 0).length),
    code: () => 'console.log(nums.filter((x) => x % 2 === 0).length);',
  },
  {
    name: 'multiples',
    ks: range(3, 12),
    text: (k) => `how many of them are divisible by ${k}`,
    solve: (xs, k) => String(xs.filter((x) => x % k === 0).length),
    code: (k) => `console.log(nums.filter((x) => x % ${k} === 0).length);`,
  },
  {
    name: 'above',
    ks: range(-10, 30),
    text: (k) => `the sum of those greater than ${k} (0 if there are none)`,
    solve: (xs, k) => String(sum(xs.filter((x) => x > k))),
    code: (k) => `console.log(nums.filter((x) => x > ${k}).reduce((a, b) => a + b, 0));`,
  },
  {
    name: 'below',
    ks: range(-10, 30),
    text: (k) => `the sum of those less than ${k} (0 if there are none)`,
    solve: (xs, k) => String(sum(xs.filter((x) => x < k))),
    code: (k) => `console.log(nums.filter((x) => x < ${k}).reduce((a, b) => a + b, 0));`,
  },
  {
    name: 'times',
    ks: range(2, 12),
    text: (k) => `each of them multiplied by ${k}, on one line, separated by spaces`,
    solve: (xs, k) => xs.map((x) => x * k).join(' '),
    code: (k) => `console.log(nums.map((x) => x * ${k}).join(' '));`,
  },
];

/** The families' names, for tests and reports. */
export const CODE_FAMILIES = FAMILIES.map((f) => f.name);

interface Question {
  family: Family;
  format: Format;
  k: number;
  question: string;
}

let everyQuestion: Question[] | undefined;

function allQuestions(): Question[] {
  everyQuestion ??= FAMILIES.flatMap((family) =>
    family.ks.flatMap((k) =>
      (Object.keys(FORMATS) as Format[]).map((format) => ({
        family,
        format,
        k: k ?? 0,
        question:
          `Write a JavaScript (Node.js) program. Its standard input holds ${FORMATS[format].text}. ` +
          `It prints ${family.text(k ?? 0)}`,
      })),
    ),
  );
  return everyQuestion;
}

/** FNV-1a of a string, to seed each question's tests from the question alone. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** 3 to 5 tests: a single integer, then lists of 2 to 8 integers in [-20, 60]; fixed by the question. */
function testsFor(q: Question): CodeAnswer['tests'] {
  const rand = seededUniform(hash(q.question));
  const lists = [[randomInt(rand, -20, 60)]];
  const count = randomInt(rand, 3, 5);
  while (lists.length < count) {
    lists.push(Array.from({ length: randomInt(rand, 2, 8) }, () => randomInt(rand, -20, 60)));
  }
  return lists.map((xs) => ({ input: FORMATS[q.format].write(xs), output: q.family.solve(xs, q.k) }));
}

function solutionFor(q: Question): string {
  const skip = FORMATS[q.format].skip;
  return [
    "const nums = require('fs').readFileSync(0, 'utf8').split(/\\s+/).filter(Boolean).map(Number)" +
      (skip ? `.slice(${skip});` : ';'),
    q.family.code(q.k),
  ].join('\n');
}

/**
 * The split of a question goes by its task, the kind and its k, not by its text: the same task asked with
 * another input layout has the same program (or nearly), so a held-out question whose task is among the
 * training questions would measure memory, not skill.
 */
function splitOfTask(q: Question): 'train' | 'test' {
  return splitOf(`${q.family.name}:${q.k}`);
}

/**
 * Small stdin/stdout programming questions in JavaScript ("read integers, print their sum / the largest /
 * them reversed / how many are even / ..."), each with 3 to 5 test cases and a reference solution. The
 * train and held-out splits are disjoint (split by a hash of the task, splitOfTask); the seed
 * picks which questions and in which order, and a question's tests depend on the question alone.
 */
export function codeExamples(split: 'train' | 'test', count: number, seed: number): CodeExample[] {
  const pool = allQuestions().filter((q) => splitOfTask(q) === split);
  if (count > pool.length) {
    throw new RangeError(`code: ${count} ${split} questions asked, there are ${pool.length}`);
  }
  const rand = seededUniform(seed * 2 + (split === 'train' ? 0 : 1) + 104_729);
  const order = pool.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = randomInt(rand, 0, i);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order.slice(0, count).map((index, i) => {
    const q = pool[index]!;
    return {
      id: `code-${split}-${seed}-${i}`,
      question: q.question,
      answer: { tests: testsFor(q) },
      solution: solutionFor(q),
      family: q.family.name,
    };
  });
}

/** How many questions each split holds. */
export function codeSplitSizes(): { train: number; test: number } {
  const test = allQuestions().filter((q) => splitOfTask(q) === 'test').length;
  return { train: allQuestions().length - test, test };
}
