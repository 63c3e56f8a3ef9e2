/**
 * The R1 evaluation protocol (the DeepSeek-R1 paper's evaluation setup): k samples per question at temperature 0.6 / top-p 0.95;
 * pass@1 is the mean correctness over the samples, pass@k the unbiased estimator of Chen et al. (2021),
 * cons@k the correctness of the majority answer.
 */

/** Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k). */
export function passAtK(n: number, c: number, k: number): number {
  if (
    !(Number.isInteger(n) && Number.isInteger(c) && Number.isInteger(k)) ||
    c < 0 ||
    c > n ||
    k < 1 ||
    k > n
  ) {
    throw new RangeError(`passAtK: need integers 0 <= c <= n and 1 <= k <= n, got n=${n} c=${c} k=${k}`);
  }
  if (n - c < k) return 1;
  // C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), stable for large n.
  let ratio = 1;
  for (let i = n - c + 1; i <= n; i++) ratio *= 1 - k / i;
  return 1 - ratio;
}

/**
 * Majority vote over the answers (null = no answer, never a candidate). Ties go to the answer seen
 * first. Returns whether the voted answer is correct; false when there is no answer at all.
 */
export function consensusCorrect(samples: readonly { answer: string | null; correct: boolean }[]): boolean {
  const votes = new Map<string, { count: number; correct: boolean }>();
  for (const s of samples) {
    if (s.answer === null) continue;
    const v = votes.get(s.answer);
    if (v) v.count++;
    else votes.set(s.answer, { count: 1, correct: s.correct });
  }
  let best: { count: number; correct: boolean } | undefined;
  for (const v of votes.values()) if (!best || v.count > best.count) best = v;
  return best?.correct ?? false;
}

export interface QuestionSamples {
  /** Normalised answer of each sample (so that "0.5" and "1/2" vote together), or null. */
  answers: (string | null)[];
  correct: boolean[];
}

export interface EvalSummary {
  questions: number;
  samplesPerQuestion: number;
  /** Mean over questions of the share of correct samples. */
  pass1: number;
  /** Each question's share of correct samples, in question order (for paired comparisons). */
  pass1ByQuestion: number[];
  /** Unbiased pass@k for each k asked. */
  passAtK: Record<number, number>;
  /** Share of questions whose majority answer is correct. */
  consAtK: number;
}

export function summarizeEval(
  questions: readonly QuestionSamples[],
  ks: readonly number[] = [1],
): EvalSummary {
  if (questions.length === 0) throw new RangeError('summarizeEval: no questions');
  const n = questions[0]!.correct.length;
  const mean = (f: (q: QuestionSamples) => number) =>
    questions.reduce((a, q) => a + f(q), 0) / questions.length;
  const count = (q: QuestionSamples) => q.correct.filter(Boolean).length;
  const pass1ByQuestion = questions.map((q) => count(q) / q.correct.length);
  return {
    questions: questions.length,
    samplesPerQuestion: n,
    pass1: pass1ByQuestion.reduce((a, p) => a + p, 0) / questions.length,
    pass1ByQuestion,
    passAtK: Object.fromEntries(
      ks.filter((k) => k <= n).map((k) => [k, mean((q) => passAtK(q.correct.length, count(q), k))]),
    ),
    consAtK: mean((q) =>
      consensusCorrect(q.answers.map((answer, i) => ({ answer, correct: q.correct[i]! }))) ? 1 : 0,
    ),
  };
}
