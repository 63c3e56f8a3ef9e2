/**
 * Reading answers out of completions and comparing them as numbers (R1's rule-based accuracy reward: compared as numbers
 * and fractions, not as strings).
 */

/** Each chain of thought: a <think> to its </think>, or to the end when it is not closed. */
const THINK = /<think>([\s\S]*?)(?:<\/think>|$)/g;

/**
 * The reasoning of a completion, for rules that read it (language consistency, step accuracy): every
 * <think> span, joined; without one, the text before the first <answer> (all of it when there is none),
 * so that leaving the tags out does not leave the reasoning unread.
 */
export function extractReasoning(completion: string): string {
  const spans = [...completion.matchAll(THINK)].map((m) => m[1]!);
  return spans.length > 0 ? spans.join('\n') : completion.split('<answer>')[0]!;
}

/** The completion with its chains of thought blanked out: what it says outside them. */
export function outsideThink(completion: string): string {
  return completion.replace(THINK, ' ');
}

/**
 * The text inside the last <answer>...</answer> outside the chain of thought, as written (untrimmed), else
 * null: an answer tried inside <think> (or in one cut off before its </think>) is not the answer.
 */
export function lastAnswerTag(completion: string): string | null {
  const tags = [...outsideThink(completion).matchAll(/<answer>([\s\S]*?)<\/answer>/g)];
  return tags.length > 0 ? tags[tags.length - 1]![1]! : null;
}

/** The text inside the last <answer>...</answer> (lastAnswerTag), else the last \boxed{...}, else null. */
export function extractAnswer(completion: string): string | null {
  const tag = lastAnswerTag(completion);
  if (tag !== null) return tag.trim();
  const boxed = [...outsideThink(completion).matchAll(/\\boxed\{([^{}]*)\}/g)];
  if (boxed.length > 0) return boxed[boxed.length - 1]![1]!.trim();
  return null;
}

/** An exact rational p/q with q > 0, in lowest terms. */
export interface Rational {
  p: bigint;
  q: bigint;
}

const gcd = (a: bigint, b: bigint): bigint => {
  a = a < 0n ? -a : a;
  b = b < 0n ? -b : b;
  while (b) [a, b] = [b, a % b];
  return a;
};

function rational(p: bigint, q: bigint): Rational | null {
  if (q === 0n) return null;
  if (q < 0n) [p, q] = [-p, -q];
  const g = gcd(p, q) || 1n;
  return { p: p / g, q: q / g };
}

/** Parse "42", "-3.50", "1,234", "7/2", "-1 / 3", "1e3" as an exact rational; anything else is null. */
export function parseNumber(text: string): Rational | null {
  let s = text
    .trim()
    .replace(/^\$|\$$/g, '')
    .trim();
  // Thousands separators only where every group has three digits: 1,234,567 but not 1,2345.
  if (/^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?$/.test(s)) s = s.replace(/,/g, '');
  const frac = /^([+-]?\d+)\s*\/\s*([+-]?\d+)$/.exec(s);
  if (frac) return rational(BigInt(frac[1]!), BigInt(frac[2]!));
  const dec = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(s);
  if (!dec || (dec[2] === '' && (dec[3] ?? '') === '')) return null;
  const sign = dec[1] === '-' ? -1n : 1n;
  const digits = BigInt(`${dec[2] || '0'}${dec[3] ?? ''}`);
  let exp = -(dec[3]?.length ?? 0) + Number(dec[4] ?? 0);
  if (Math.abs(exp) > 400) return null;
  let p = sign * digits;
  let q = 1n;
  for (; exp > 0; exp--) p *= 10n;
  for (; exp < 0; exp++) q *= 10n;
  return rational(p, q);
}

/** True when both parse as numbers and are equal exactly (so 0.5 = 1/2 = 0.50, but 0.3333 != 1/3). */
export function numericallyEqual(a: string, b: string): boolean {
  const x = parseNumber(a);
  const y = parseNumber(b);
  return x !== null && y !== null && x.p === y.p && x.q === y.q;
}
