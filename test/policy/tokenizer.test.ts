import { describe, expect, it } from 'vitest';
import { CharTokenizer, DEFAULT_ALPHABET, TAGS, tokenizerFromSpec } from '../../src/policy/tokenizer.ts';

const R1_TEMPLATE =
  'A conversation between User and Assistant. The Assistant first thinks about the reasoning ' +
  'process in the mind and then provides the answer, enclosed within <think> </think> and ' +
  '<answer> </answer> tags, i.e., <think> reasoning here </think> <answer> answer here </answer>.\n' +
  'User: Using the numbers [19, 36, 55, 7], create an equation that equals 65: (+, -, *, /). Assistant:';

describe('CharTokenizer', () => {
  const tokenizer = new CharTokenizer();

  it('round-trips the R1 template and arithmetic text', () => {
    for (const text of [R1_TEMPLATE, '12*(3+4)-5/6=7', '']) {
      expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
    }
  });

  it('encodes each tag as one special token and plain < > as characters', () => {
    const ids = tokenizer.encode('<think>1<2</think><answer>3>2</answer>');
    expect(ids).toEqual([
      tokenizer.tagIds.thinkOpen,
      ...tokenizer.encode('1<2'),
      tokenizer.tagIds.thinkClose,
      tokenizer.tagIds.answerOpen,
      ...tokenizer.encode('3>2'),
      tokenizer.tagIds.answerClose,
    ]);
    expect(ids).toHaveLength(10);
    const tagIds = Object.values(tokenizer.tagIds);
    expect(new Set(tagIds).size).toBe(4);
    for (const [name, text] of Object.entries(TAGS)) {
      expect(tokenizer.encode(text)).toEqual([tokenizer.tagIds[name as keyof typeof TAGS]]);
    }
  });

  it('has distinct special ids below the characters, and a vocabulary that covers every id', () => {
    const specials = [tokenizer.padId, tokenizer.eosId, tokenizer.bosId, ...Object.values(tokenizer.tagIds)];
    expect(new Set(specials).size).toBe(specials.length);
    const charIds = tokenizer.encode(DEFAULT_ALPHABET);
    expect(Math.min(...charIds)).toBeGreaterThan(Math.max(...specials));
    expect(Math.max(...charIds)).toBe(tokenizer.vocabSize - 1);
    expect(
      tokenizer.decode([tokenizer.bosId, ...tokenizer.encode('7'), tokenizer.eosId, tokenizer.padId]),
    ).toBe('7');
  });

  it('names the unknown character and its position', () => {
    expect(() => tokenizer.encode('1 + 2 = 3 €')).toThrow(/unknown character "€" \(U\+20AC\) at position 10/);
    expect(() => tokenizer.decode([tokenizer.vocabSize])).toThrow(/outside the vocabulary/);
  });

  it('supports a custom alphabet, rebuilt from its spec', () => {
    const digits = new CharTokenizer('0123456789+=');
    expect(digits.vocabSize).toBe(7 + 12);
    expect(() => digits.encode('1+a')).toThrow(/"a" \(U\+0061\) at position 2/);
    const rebuilt = tokenizerFromSpec(digits.spec());
    expect(rebuilt.encode('12+3=15')).toEqual(digits.encode('12+3=15'));
    expect(() => new CharTokenizer('abca')).toThrow(/repeats "a"/);
  });
});
