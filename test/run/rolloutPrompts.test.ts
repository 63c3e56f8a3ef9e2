/** What a Kafka rollout worker refuses to sample (and dead-letters) instead of failing on it. */
import { expect, it } from 'vitest';
import { promptProblem } from '../../src/run/kafka/rollout.ts';
import { CharTokenizer } from '../../src/policy/tokenizer.ts';
import { prompt } from '../fixtures.ts';

const check = promptProblem(new CharTokenizer('0123456789+= '), 12);

it('names a character the tokenizer cannot read, a prompt with no room left, and an empty one', () => {
  expect(check({ ...prompt('p1'), text: '12+3=' })).toBeUndefined();
  expect(check({ ...prompt('p2'), text: '12¿3=' })).toMatch(
    /^prompt p2: CharTokenizer: unknown character .* at position 2/,
  );
  expect(check({ ...prompt('p3'), text: '12345678901' })).toBeUndefined(); // 11 tokens: one left
  expect(check({ ...prompt('p4'), text: '123456789012' })).toBe(
    "prompt p4: 12 tokens leave no room for a completion in the model's context of 12",
  );
  expect(check({ ...prompt('p5'), text: '' })).toBe('prompt p5: its text is empty');
});
