/** Rewards of one's own from a module (TRL's reward_funcs): each form of export, and the errors a mistake gets. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { moduleReward } from '../../src/rewards/module.ts';
import { rewardsReady } from '../../src/run/taskRuntime.ts';
import type { RewardInput } from '../../src/rewards/rewards.ts';
import { prompt } from '../fixtures.ts';

const dir = mkdtempSync(join(tmpdir(), 'rxrl-reward-module-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, text: string) => {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
};
const input = (completion: string): RewardInput => ({
  prompt: prompt('p'),
  completion,
  completionTokens: completion.length,
  finishReason: 'eos',
});
const never = new AbortController().signal;

describe('moduleReward', () => {
  it('scores with a default-exported function, named after the file', async () => {
    const reward = moduleReward({
      path: file(
        'short.ts',
        'export default ({ completion }: { completion: string }) => (completion.length <= 5 ? 1 : 0);\n',
      ),
    });
    expect(reward.name).toBe('short');
    await reward.ready();
    expect(await reward.score(input('12'), never)).toBe(1);
    expect(await reward.score(input('123456'), never)).toBe(0);
  });

  it('takes a named export of a { score } object, async, and a name of its own', async () => {
    const path = file(
      'rewards.mjs',
      'export const digits = { name: "ignored", score: async ({ completion }) => (/^[0-9]+$/.test(completion) ? 1 : null) };\n',
    );
    const reward = moduleReward({ path, export: 'digits', name: 'only_digits' });
    expect(reward.name).toBe('only_digits');
    expect(await reward.score(input('42'), never)).toBe(1);
    expect(await reward.score(input('x'), never)).toBeNull();
  });

  it('names a reward after its export, counts true/false as 1/0, and says what else came back', async () => {
    const path = file(
      'checks.mjs',
      'export const short = ({ completion }) => completion.length < 3;\nexport const broken = () => undefined;\n',
    );
    const short = moduleReward({ path, export: 'short' });
    expect(short.name).toBe('short');
    await short.ready();
    // Loaded and synchronous: scores without a promise.
    expect(short.score(input('ab'), never)).toBe(1);
    expect(short.score(input('abcd'), never)).toBe(0);
    const broken = moduleReward({ path, export: 'broken' });
    await broken.ready();
    expect(() => broken.score(input('x'), never)).toThrow(
      'reward broken returned undefined (give a number, or null where it does not apply)',
    );
  });

  it('refuses two rewards of one name before a run starts', async () => {
    const path = file('twice.mjs', 'export default () => 1;\n');
    const reward = (name?: string) => ({ fn: moduleReward({ path, ...(name ? { name } : {}) }), weight: 1 });
    await expect(rewardsReady([reward(), reward()])).rejects.toThrow(
      "Two rewards are named twice: give a module reward a name of its own ({ kind: 'module', path, name })",
    );
    await expect(rewardsReady([reward(), reward('twice_again')])).resolves.toBeUndefined();
  });

  it('says what is wrong: no file, a module that does not load, no usable export', async () => {
    await expect(moduleReward({ path: join(dir, 'nope.ts') }).ready()).rejects.toThrow(
      `reward nope: no module at ${join(dir, 'nope.ts')}`,
    );
    const broken = file('broken.mjs', 'export default = 1;\n');
    await expect(moduleReward({ path: broken }).ready()).rejects.toThrow(
      `reward broken: ${broken} failed to load:`,
    );
    const wrong = file('wrong.mjs', 'export const weight = 2;\nexport const scoreIt = 3;\n');
    await expect(moduleReward({ path: wrong }).ready()).rejects.toThrow(
      `reward wrong: ${wrong} has no function or { score } as its default export (it exports scoreIt, weight)`,
    );
    await expect(moduleReward({ path: wrong, export: 'weight' }).ready()).rejects.toThrow(
      'as its export "weight"',
    );
  });
});
