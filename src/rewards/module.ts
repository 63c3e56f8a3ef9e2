/**
 * A reward function of your own, from a module: what TRL's `reward_funcs=[my_fn]` is to GRPOTrainer. The
 * module's export (`default` unless the spec names another) is either a function called with each
 * rollout's RewardInput and the stage's AbortSignal, returning a number, null ("does not apply") or a
 * promise of one, or a RewardFunction object with such a `score`.
 *
 * ```ts
 * // short.ts: 1 for a completion of at most 40 characters
 * export default ({ completion }: { completion: string }) => (completion.length <= 40 ? 1 : 0);
 * ```
 *
 * The path is resolved against the working directory; `.ts` modules load as pipelines do. The module
 * loads at `ready()`, which runs await before they generate, so a missing file or export stops the run at
 * its start with the reason, instead of failing every score.
 */
import { existsSync } from 'node:fs';
import { basename, extname, resolve } from 'node:path';
import { importModule } from '../importModule.ts';
import type { RewardFunction, RewardInput } from './rewards.ts';

export interface ModuleRewardSpec {
  path: string;
  /** The export to use (default: `default`). */
  export?: string;
  /** The reward's name in rewards and metrics (default: the file's name without its extension). */
  name?: string;
}

type Score = (input: RewardInput, signal: AbortSignal) => number | null | Promise<number | null>;

export function moduleReward(spec: ModuleRewardSpec): RewardFunction & { ready(): Promise<void> } {
  const file = resolve(spec.path);
  const exportName = spec.export ?? 'default';
  const name = spec.name ?? basename(file, extname(file));
  let loading: Promise<Score> | undefined;
  const load = (): Promise<Score> =>
    (loading ??= (async () => {
      if (!existsSync(file)) throw new Error(`reward ${name}: no module at ${file}`);
      let mod: Record<string, unknown>;
      try {
        mod = await importModule(file, 'a reward module');
      } catch (error) {
        throw new Error(`reward ${name}: ${(error as Error).message}`, { cause: error });
      }
      const value = mod[exportName];
      if (typeof value === 'function') return value as Score;
      if (
        value !== null &&
        typeof value === 'object' &&
        typeof (value as RewardFunction).score === 'function'
      ) {
        const fn = value as RewardFunction;
        return (input, signal) => fn.score(input, signal);
      }
      const exported = Object.keys(mod).sort().join(', ') || 'nothing';
      throw new Error(
        `reward ${name}: ${file} has no function or { score } as its ${exportName === 'default' ? 'default export' : `export "${exportName}"`} (it exports ${exported})`,
      );
    })());
  return {
    name,
    ready: async () => {
      await load();
    },
    score: async (input, signal) => (await load())(input, signal),
  };
}
