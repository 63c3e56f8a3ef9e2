import { randomInt } from '../random.ts';

/**
 * The synthetic pretraining corpus that makes a base model for R1-Zero in miniature. A real base
 * model has seen the task's language with answers of mixed quality; this corpus reproduces that:
 * every document is a question in the template, a column-by-column chain of thought and an answer,
 * but the arithmetic is sloppy (each column is right with probability `columnAccuracy`, and the
 * answer follows from the columns as written) and some documents break the format. A model trained
 * on it knows the syntax and starts with a low but nonzero accuracy, which RL then raises.
 */

/**
 * Revisions of the corpus generators, by task. A base model is cached under a hash of its settings
 * (src/run/pretrain.ts); when a generator writes other documents for the same settings, bump its task's
 * revision so that base models trained on the old documents are not reused. Revision 0 stays out of the
 * hash, which keeps the keys of the base models cached before revisions existed. Revision 1 (both
 * tasks): the train/test split goes by problem, so the training questions changed.
 */
export const CORPUS_REVISION: Readonly<Record<string, number>> = { arithmetic: 1, countdown: 1 };

export interface CorpusNoise {
  /** Probability that each column of the written sum is right. */
  columnAccuracy: number;
  /** Probability that a document breaks the <think>/<answer> format. */
  brokenFormat: number;
}

export const DEFAULT_NOISE: CorpusNoise = { columnAccuracy: 0.5, brokenFormat: 0.25 };

/** One column of a written sum: the digits, the carry into it and the sum as written (maybe wrong). */
export interface AdditionColumn {
  x: number;
  y: number;
  carryIn: number;
  sum: number;
}

/**
 * Column-wise addition as written by a careful (or careless) student, right to left, with the answer
 * assembled from the columns as written. `slip` decides, per column, the error to make (0: none).
 */
export function additionColumns(
  a: number,
  b: number,
  slip: () => number,
): { columns: AdditionColumn[]; answer: string } {
  const da = String(a).split('').reverse().map(Number);
  const db = String(b).split('').reverse().map(Number);
  const columns: AdditionColumn[] = [];
  const digits: number[] = [];
  let carry = 0;
  for (let i = 0; i < Math.max(da.length, db.length); i++) {
    const x = da[i] ?? 0;
    const y = db[i] ?? 0;
    const sum = Math.max(0, x + y + carry + slip());
    columns.push({ x, y, carryIn: carry, sum });
    digits.push(sum % 10);
    carry = Math.floor(sum / 10);
  }
  if (carry) digits.push(carry);
  return {
    columns,
    answer: digits
      .reverse()
      .join('')
      .replace(/^0+(?=\d)/, ''),
  };
}

/**
 * The languages the words of a chain of thought are written in. R1-Zero's chains of thought mix
 * languages; DeepSeek-R1's language-consistency reward scores the share of words in the target one.
 */
export type ReasoningLanguage = 'en' | 'zh';
export const REASONING_LANGUAGES: readonly ReasoningLanguage[] = ['en', 'zh'];

/**
 * Mixing weights of a worded chain of thought: each step's language is drawn on its own, with
 * probability proportional to its weight (`{ en: 1, zh: 1 }`: each step English or Chinese at even odds).
 */
export type ReasoningLanguages = Partial<Record<ReasoningLanguage, number>>;

/**
 * How each language notes the carry out of a column, after the column's sum: the same information in
 * the same number of words, as countWords counts them (a run of Latin letters or one Han character is
 * a word: "carry 1" / "进1" one, "no carry" / "不进" two), so a step weighs the same in the
 * language-consistency score whichever language it is written in.
 */
export const CARRY_WORDS: Readonly<
  Record<ReasoningLanguage, { carry: (carry: number) => string; none: string }>
> = {
  en: { carry: (c) => `carry ${c}`, none: 'no carry' },
  zh: { carry: (c) => `进${c}`, none: '不进' },
};

/**
 * One step of the working: "7+8=15" for the column 7+8, or with words in a language,
 * "7+8=15 carry 1" / "7+8=15 进1", "3+4+1=8 no carry" / "3+4+1=8 不进". The words only restate the
 * sum, so they never change what the step says.
 */
export function columnStep(column: AdditionColumn, language?: ReasoningLanguage): string {
  const { x, y, carryIn, sum } = column;
  const step = `${x}+${y}${carryIn ? `+${carryIn}` : ''}=${sum}`;
  if (language === undefined) return step;
  const carry = Math.floor(sum / 10);
  const words = CARRY_WORDS[language];
  return `${step} ${carry ? words.carry(carry) : words.none}`;
}

/**
 * Column-wise addition as written by a careful (or careless) student: "7+8=15,5+6+1=12" for 57+68,
 * with the answer assembled from the columns. `slip` decides, per column, the error to make (0: none).
 * `languageOf` (column index -> language) words each step instead ("7+8=15 carry 1,5+6+1=12 进1").
 */
export function additionWorking(
  a: number,
  b: number,
  slip: () => number,
  languageOf?: (column: number) => ReasoningLanguage,
): { think: string; answer: string } {
  const { columns, answer } = additionColumns(a, b, slip);
  return { think: columns.map((c, i) => columnStep(c, languageOf?.(i))).join(','), answer };
}

/** The characters the worded working of these languages writes besides digits and symbols. */
export function reasoningAlphabet(languages: ReasoningLanguages): string {
  const chars = new Set<string>();
  for (const language of REASONING_LANGUAGES) {
    if (!((languages[language] ?? 0) > 0)) continue;
    const words = CARRY_WORDS[language];
    for (const ch of `${words.carry(0)}${words.none}`) if (!/[\d\s]/.test(ch)) chars.add(ch);
  }
  return [...chars].sort().join('');
}

/** Draws a language by the mixing weights (one uniform draw). */
export function drawLanguage(rand: () => number, languages: ReasoningLanguages): ReasoningLanguage {
  const weighted = REASONING_LANGUAGES.map((l) => [l, languages[l] ?? 0] as const).filter(([, w]) => w > 0);
  const total = weighted.reduce((sum, [, w]) => sum + w, 0);
  if (!(total > 0 && Number.isFinite(total)))
    throw new RangeError(`reasoning languages: need a positive weight, got ${JSON.stringify(languages)}`);
  let u = rand() * total;
  for (const [language, weight] of weighted) {
    if (u < weight) return language;
    u -= weight;
  }
  return weighted[weighted.length - 1]![0];
}

/**
 * One pretraining document (the text after the prompt) for the question "a+b". With `languages`, each
 * step is worded in a language drawn by the mixing weights; the slips and the format are drawn first,
 * exactly as without, so a worded document has the same arithmetic as the plain one from the same
 * state of `rand`, and the words of each language are as often right as those of the other.
 */
export function noisyAdditionCompletion(
  a: number,
  b: number,
  rand: () => number,
  noise: CorpusNoise,
  languages?: ReasoningLanguages,
): string {
  const slip = () => (rand() < noise.columnAccuracy ? 0 : [-1, 1, -2, 2][randomInt(rand, 0, 3)]!);
  const { columns, answer } = additionColumns(a, b, slip);
  const broken = rand() < noise.brokenFormat ? randomInt(rand, 0, 2) : -1;
  const stepLanguages = languages ? columns.map(() => drawLanguage(rand, languages)) : undefined;
  const think = columns.map((c, i) => columnStep(c, stepLanguages?.[i])).join(',');
  if (broken >= 0) {
    const documents = [
      `${think}<answer>${answer}</answer>`,
      `<think>${think}</think>${answer}`,
      `<answer>${answer}`,
    ];
    return documents[broken]!;
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
  /**
   * Most attempts one document makes (default 1). A document makes 1 to `maxAttempts` of them, stopping
   * at the first that reaches the target, and answers with its last one: a search the base model can
   * imitate, which RL can then lengthen and aim.
   */
  maxAttempts?: number;
}

/**
 * A Countdown pretraining document: attempts written out step by step ("7*10=70,70-2=68 10*2=20,20+7=27",
 * attempts apart by a space), with the arithmetic done right but the choice of numbers and operations
 * usually wrong, then the last attempt's expression as the answer. It makes 1 to `maxAttempts` attempts
 * and stops early at one that reaches the target. With probability `solveRate` its last attempt is one
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
  const solve = solving.length > 0 && rand() < noise.solveRate;
  // Drawn only for a multi-attempt corpus, so one-attempt documents stay as they were.
  const attempts = (noise.maxAttempts ?? 1) > 1 ? randomInt(rand, 1, noise.maxAttempts!) : 1;
  const written: CountdownChain[] = [];
  for (let i = 0; i < attempts; i++) {
    const pool = solve && i === attempts - 1 ? solving : chains;
    const chain = pool[randomInt(rand, 0, pool.length - 1)]!;
    written.push(chain);
    if (chain.value === target) break;
  }
  const think = written.map((c) => c.steps.join(',')).join(' ');
  const { expression } = written[written.length - 1]!;
  if (rand() < noise.brokenFormat) {
    const broken = [`${think}<answer>${expression}</answer>`, `<think>${think}</think>${expression}`];
    return broken[randomInt(rand, 0, broken.length - 1)]!;
  }
  return `<think>${think}</think><answer>${expression}</answer>`;
}

/**
 * A Countdown drill: the steps of one random attempt after another at the same question's numbers
 * ("7*10=70,70/2=35,10-2=8,8*7=56,..."), up to `maxChars` characters, with no answer. A base model
 * pretrained on the task's documents alone sees about five arithmetic facts per document and does not
 * learn them (13% of its steps were right); a drill row after the question gives it many more facts, on
 * the question's own numbers so it still reads them from the question.
 */
export function countdownDrill(numbers: readonly number[], rand: () => number, maxChars: number): string {
  const chains = countdownChains(numbers);
  const steps: string[] = [];
  let length = -1;
  for (;;) {
    for (const step of chains[randomInt(rand, 0, chains.length - 1)]!.steps) {
      if (length + 1 + step.length > maxChars) return steps.join(',');
      steps.push(step);
      length += 1 + step.length;
    }
  }
}
