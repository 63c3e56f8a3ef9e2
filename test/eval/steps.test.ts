import { describe, expect, it } from 'vitest';
import { checkSteps } from '../../src/eval/steps.ts';

describe('checkSteps', () => {
  it('counts the right and wrong arithmetic steps of the chain of thought', () => {
    expect(checkSteps('<think>7*10=70,70/2=35</think><answer>(7*10)/2</answer>')).toEqual({
      steps: 2,
      right: 2,
    });
    expect(checkSteps('<think>9*8=14,14-5=9</think><answer>9*8-5</answer>')).toEqual({ steps: 2, right: 1 });
    expect(checkSteps('<think>9-10=-1,-1*5=-5,6/4=1.5</think>')).toEqual({ steps: 3, right: 3 });
    // Addition columns with a carry, worded in English or Chinese.
    expect(checkSteps('<think>7+8=15 carry 1,5+6+1=12 进1</think><answer>125</answer>')).toEqual({
      steps: 2,
      right: 2,
    });
    expect(checkSteps('<think>5+6+1=13</think>')).toEqual({ steps: 1, right: 0 });
  });

  it('reads only the chain of thought: the answer and text after </think> are not steps', () => {
    expect(checkSteps('<think>2+2=4</think><answer>3+3=7</answer>')).toEqual({ steps: 1, right: 1 });
    // Without <think>, everything before <answer> is the working.
    expect(checkSteps('2+2=5<answer>1+1=2</answer>')).toEqual({ steps: 1, right: 0 });
    // A chain of thought cut off by the token limit still counts what it wrote.
    expect(checkSteps('<think>3*3=9,9+1=1')).toEqual({ steps: 2, right: 1 });
    expect(checkSteps('<think>no arithmetic here</think>')).toEqual({ steps: 0, right: 0 });
  });
});
