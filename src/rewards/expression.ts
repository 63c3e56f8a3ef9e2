/**
 * A safe evaluator for the arithmetic expressions Countdown answers are made of: numbers, + - * /,
 * parentheses, unary minus. No eval: an answer is text written by a policy.
 */
export interface ParsedExpression {
  value: number;
  /** Every number literal in the order written. */
  numbers: number[];
}

/** Parse and evaluate; null when the text is not such an expression. */
export function evaluateExpression(text: string): ParsedExpression | null {
  const tokens = text.match(/\d+(?:\.\d+)?|[-+*/()]|\S/g) ?? [];
  let pos = 0;
  const numbers: number[] = [];
  const peek = () => tokens[pos];

  const primary = (): number | null => {
    const t = tokens[pos++];
    if (t === undefined) return null;
    if (t === '(') {
      const v = sum();
      if (v === null || tokens[pos++] !== ')') return null;
      return v;
    }
    if (t === '-') {
      const v = primary();
      return v === null ? null : -v;
    }
    if (/^\d/.test(t)) {
      const n = Number(t);
      numbers.push(n);
      return n;
    }
    return null;
  };
  const product = (): number | null => {
    let v = primary();
    while (v !== null && (peek() === '*' || peek() === '/')) {
      const op = tokens[pos++];
      const r = primary();
      if (r === null) return null;
      v = op === '*' ? v * r : v / r;
    }
    return v;
  };
  const sum = (): number | null => {
    let v = product();
    while (v !== null && (peek() === '+' || peek() === '-')) {
      const op = tokens[pos++];
      const r = product();
      if (r === null) return null;
      v = op === '+' ? v + r : v - r;
    }
    return v;
  };

  if (tokens.length === 0) return null;
  const value = sum();
  if (value === null || pos !== tokens.length) return null;
  return { value, numbers };
}
