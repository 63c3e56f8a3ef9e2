import { extractReasoning } from '../rewards/answer.ts';
import { evaluateExpression } from '../rewards/expression.ts';

/** The arithmetic steps of a chain of thought and how many of them are right. */
export interface StepCheck {
  steps: number;
  right: number;
}

// "7+8=15", "5+6+1=12", "72-5=67", "-1*5=-5", "70/2=35": an expression of numbers and + - * /, "=", a number.
const STEP = /(-?\d+(?:\.\d+)?(?:[-+*/]-?\d+(?:\.\d+)?)+)=(-?\d+(?:\.\d+)?)/g;

/**
 * Checks the arithmetic written in a completion's chain of thought (extractReasoning: the text inside
 * <think>, or before <answer> when there is no <think>): every "expression=number" step is right when the expression's value
 * (usual precedence) equals the number. For tasks whose working is checkable step by step (Countdown's
 * "7*10=70,70/2=35", the column sums of addition) this tells a base model that knows the arithmetic
 * and only has to learn to aim from one that guesses.
 */
export function checkSteps(completion: string): StepCheck {
  const think = extractReasoning(completion);
  let steps = 0;
  let right = 0;
  for (const [, lhs, rhs] of think.matchAll(STEP)) {
    const value = evaluateExpression(lhs!)?.value;
    steps++;
    if (value !== undefined && Math.abs(value - Number(rhs)) < 1e-9) right++;
  }
  return { steps, right };
}
