import { describe, expect, it } from 'vitest';
import { extractAnswer, numericallyEqual, parseNumber } from '../../src/rewards/answer.ts';
import { evaluateExpression } from '../../src/rewards/expression.ts';
import {
  accuracyReward,
  countdownReward,
  countWords,
  formatReward,
  languageConsistencyReward,
  overlongPenalty,
  type RewardInput,
} from '../../src/rewards/rewards.ts';
import { prompt } from '../fixtures.ts';

const signal = new AbortController().signal;
const input = (completion: string, answer: unknown = '4', completionTokens = 10): RewardInput => ({
  prompt: { ...prompt('p'), answer },
  completion,
  completionTokens,
  finishReason: 'eos',
});

describe('answers', () => {
  it('takes the last <answer> tag, else the last \\boxed{}', () => {
    expect(extractAnswer('<think>2+2</think><answer> 4 </answer>')).toBe('4');
    expect(extractAnswer('<answer>3</answer> no wait <answer>4</answer>')).toBe('4');
    expect(extractAnswer('so the answer is \\boxed{7/2}')).toBe('7/2');
    expect(extractAnswer('4')).toBeNull();
  });

  it('reads the answer outside the chain of thought only: one tried inside <think> is not the answer', () => {
    expect(extractAnswer('<think>try <answer>5</answer> hmm</think>')).toBeNull();
    expect(extractAnswer('<think>guess <answer>5</answer> no wait')).toBeNull(); // cut off inside <think>
    expect(extractAnswer('<think>maybe \\boxed{5}</think>')).toBeNull();
    expect(extractAnswer('<think><answer>5</answer></think><answer>6</answer>')).toBe('6');
    expect(extractAnswer('<answer>6</answer>')).toBe('6'); // no chain of thought at all
  });

  it('compares integers, decimals and fractions as numbers, not strings', () => {
    expect(numericallyEqual('0.5', '1/2')).toBe(true);
    expect(numericallyEqual('3.50', '7/2')).toBe(true);
    expect(numericallyEqual('1,234', '1234')).toBe(true);
    expect(numericallyEqual('1,234,567', '1234567')).toBe(true);
    expect(numericallyEqual('-12,345.5', '-12345.5')).toBe(true);
    expect(parseNumber('1,2345')).toBeNull(); // not thousands separators
    expect(parseNumber('12,34')).toBeNull();
    expect(numericallyEqual('-0', '0')).toBe(true);
    expect(numericallyEqual('1e3', '1000')).toBe(true);
    expect(numericallyEqual('0.3333', '1/3')).toBe(false);
    expect(numericallyEqual('12', '21')).toBe(false);
    expect(numericallyEqual('four', '4')).toBe(false);
    expect(parseNumber('1/0')).toBeNull();
    expect(parseNumber('.')).toBeNull();
  });
});

describe('rule-based rewards', () => {
  it('accuracy', () => {
    const acc = accuracyReward();
    expect(acc.score(input('<think>x</think><answer>4.0</answer>'), signal)).toBe(1);
    expect(acc.score(input('<think>x</think><answer>5</answer>'), signal)).toBe(0);
    expect(acc.score(input('<answer>8/2</answer>', 4), signal)).toBe(1);
    expect(acc.score(input('no answer'), signal)).toBe(0);
  });

  it('format: <think> then <answer>, nothing else', () => {
    const f = formatReward();
    expect(f.score(input('<think>12+5=17</think> <answer>17</answer>'), signal)).toBe(1);
    expect(f.score(input('<think>\n多行\n</think>\n<answer>17</answer>\n'), signal)).toBe(1);
    expect(f.score(input('<answer>17</answer><think>late</think>'), signal)).toBe(0);
    expect(f.score(input('<think>no answer</think>'), signal)).toBe(0);
    expect(f.score(input('chatter <think>a</think><answer>1</answer>'), signal)).toBe(0);
    // One of each, no tag inside either.
    expect(f.score(input('<think>a</think><answer>1</answer><answer>2</answer>'), signal)).toBe(0);
    expect(f.score(input('<think>a</think>junk<think>b</think><answer>1</answer>'), signal)).toBe(0);
    expect(f.score(input('<think>a</think><answer>1</answer>junk</answer>'), signal)).toBe(0);
    expect(f.score(input('<think><think>a</think></think><answer>1</answer>'), signal)).toBe(0);
    expect(f.score(input('<think>a <answer>1</answer></think><answer>1</answer>'), signal)).toBe(0);
  });

  it('countdown: 1 correct, 0.1 wrong or misused numbers, 0 unparsable', () => {
    const c = countdownReward();
    const ans = { numbers: [3, 5, 7], target: 22 };
    expect(c.score(input('<answer>3 * 5 + 7</answer>', ans), signal)).toBe(1);
    expect(c.score(input('<answer>(7 + 5) * 3 - 14 = 22</answer>', ans), signal)).toBe(0.1); // 14 not given
    expect(c.score(input('<answer>3 * 5 + 7 = 22</answer>', ans), signal)).toBe(1);
    expect(c.score(input('<answer>3 + 5 + 7</answer>', ans), signal)).toBe(0.1);
    expect(c.score(input('<answer>3 * 5 + 7 + 7</answer>', ans), signal)).toBe(0.1);
    expect(c.score(input('<answer>import os</answer>', ans), signal)).toBe(0);
    expect(c.score(input('I give up', ans), signal)).toBe(0);
    const div = { numbers: [6, 4, 3], target: 8 };
    expect(c.score(input('<answer>6 / 3 * 4</answer>', div), signal)).toBe(1);
  });

  it('evaluates expressions with precedence, parentheses and unary minus, safely', () => {
    expect(evaluateExpression('2 + 3 * 4')).toEqual({ value: 14, numbers: [2, 3, 4] });
    expect(evaluateExpression('(2 + 3) * 4')?.value).toBe(20);
    expect(evaluateExpression('-(2 - 5)')?.value).toBe(3);
    expect(evaluateExpression('2 +')).toBeNull();
    expect(evaluateExpression('process.exit()')).toBeNull();
    expect(evaluateExpression('(1')).toBeNull();
  });

  it('counts words by Unicode script, in English, Chinese and mixed text', () => {
    expect(countWords('First add the tens, then the ones.')).toEqual({ en: 7, zh: 0 });
    expect(countWords('先算十位，再算个位。')).toEqual({ en: 0, zh: 8 });
    expect(countWords('先 add 十位 then 个位 12+5')).toEqual({ en: 2, zh: 5 });
  });

  it('language consistency: share of reasoning words in the target language', () => {
    const en = languageConsistencyReward('en');
    const zh = languageConsistencyReward('zh');
    const mixed = '<think>先算 tens 再算 ones</think><answer>17</answer>';
    expect(en.score(input(mixed), signal)).toBeCloseTo(2 / 6, 12);
    expect(zh.score(input(mixed), signal)).toBeCloseTo(4 / 6, 12);
    expect(en.score(input('<think>add the tens</think><answer>1</answer>'), signal)).toBe(1);
    expect(zh.score(input('<think>把十位相加</think><answer>1</answer>'), signal)).toBe(1);
    // Only the chain of thought counts, not the answer; pure arithmetic has no words: not applicable.
    expect(en.score(input('<think>十位</think><answer>seventeen</answer>'), signal)).toBe(0);
    expect(en.score(input('<think>12+5=17</think><answer>17</answer>'), signal)).toBeNull();
    // Every <think> counts, not the first alone; without the tags, the text before the answer.
    expect(
      en.score(input('<think>add them</think><think>三加四等于七</think><answer>7</answer>'), signal),
    ).toBe(2 / 8);
    expect(en.score(input('Let me think: 三加四等于七 <answer>7</answer>'), signal)).toBeCloseTo(3 / 9, 12);
  });

  it('language consistency of the worded addition working (pretrain.reasoningLanguages), by hand', () => {
    const en = languageConsistencyReward('en');
    const zh = languageConsistencyReward('zh');
    const both = (think: string, answer = '125') => {
      const completion = `<think>${think}</think><answer>${answer}</answer>`;
      return [en.score(input(completion), signal), zh.score(input(completion), signal)];
    };
    // 57+68: every step in English, every step in Chinese.
    expect(both('7+8=15 carry 1,5+6+1=12 carry 1')).toEqual([1, 0]);
    expect(both('7+8=15 进1,5+6+1=12 进1')).toEqual([0, 1]);
    // 34+25: "no carry" is two English words, "不进" two Chinese ones.
    expect(both('4+5=9 no carry,3+2=5 no carry', '59')).toEqual([1, 0]);
    expect(both('4+5=9 不进,3+2=5 不进', '59')).toEqual([0, 1]);
    expect(countWords('4+5=9 no carry')).toEqual({ en: 2, zh: 0 });
    expect(countWords('4+5=9 不进')).toEqual({ en: 0, zh: 2 });
    // Mixed: one step in each language; each language's words count alike, so the share of steps shows.
    expect(both('7+8=15 carry 1,5+6+1=12 进1')).toEqual([0.5, 0.5]);
    expect(both('4+5=9 不进,3+2=5 no carry', '59')).toEqual([0.5, 0.5]);
    // A step without a carry has two words, one with a carry one: 1 English word of 3.
    const [mixedEn, mixedZh] = both('8+5=13 carry 1,2+4+1=7 不进', '73');
    expect(mixedEn).toBeCloseTo(1 / 3, 12);
    expect(mixedZh).toBeCloseTo(2 / 3, 12);
    // Three columns (a slip in the hundreds), two of them English.
    expect(
      en.score(
        input('<think>9+9=18 carry 1,9+9+1=21 进2,1+0+2=3 no carry</think><answer>318</answer>'),
        signal,
      ),
    ).toBeCloseTo(3 / 4, 12);
    // Only the reasoning counts; the answer and the tags do not, and a working without words is not applicable.
    expect(both('7+8=15,5+6+1=12')).toEqual([null, null]);
    expect(en.score(input('<answer>125</answer>'), signal)).toBeNull();
    // A truncated chain of thought (no </think>) is scored on what was written.
    expect(en.score(input('<think>7+8=15 carry 1,5+6+1=12 进'), signal)).toBe(0.5);
  });

  it('overlong shaping follows DAPO: 0, then linear to -factor, then -factor', () => {
    const p = overlongPenalty({ maxLength: 100, buffer: 20, factor: 1 });
    expect(p.score(input('', '1', 80), signal)).toBe(0);
    expect(p.score(input('', '1', 90), signal)).toBeCloseTo(-0.5, 12);
    expect(p.score(input('', '1', 100), signal)).toBeCloseTo(-1, 12);
    expect(p.score(input('', '1', 150), signal)).toBe(-1);
    expect(() => overlongPenalty({ maxLength: 10, buffer: 0 })).toThrow(/buffer/);
  });
});
