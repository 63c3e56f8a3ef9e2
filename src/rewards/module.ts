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
  /**
   * The reward's name in rewards and metrics (default: the export's name when one is given, else the
   * file's name without its extension).
   */
  name?: string;
}

type Score = (input: RewardInput, signal: AbortSignal) => number | null | Promise<number | null>;

export function moduleReward(spec: ModuleRewardSpec): RewardFunction & { ready(): Promise<void> } {
  const file = resolve(spec.path);
  const exportName = spec.export ?? 'default';
  const name = spec.name ?? (exportName !== 'default' ? exportName : basename(file, extname(file)));
  let loading: Promise<Score> | undefined;
  let loaded: Score | undefined;
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
      let fn: Score | undefined;
      if (typeof value === 'function') fn = value as Score;
      else if (
        value !== null &&
        typeof value === 'object' &&
        typeof (value as RewardFunction).score === 'function'
      ) {
        const reward = value as RewardFunction;
        fn = (input, signal) => reward.score(input, signal);
      }
      if (fn) return (loaded = checked(name, fn));
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
    // Once loaded, a synchronous function scores synchronously (no promise, no timeout).
    score: (input, signal) => (loaded ? loaded(input, signal) : load().then((fn) => fn(input, signal))),
  };
}

/**
 * The user's function, its results checked: true and false count as 1 and 0 (a predicate is a common
 * reward); anything else that is not a number or null is an error that says what came back.
 */
function checked(name: string, fn: Score): Score {
  const value = (v: unknown): number | null => {
    if (typeof v === 'number' || v === null) return v;
    if (typeof v === 'boolean') return v ? 1 : 0;
    throw new Error(
      `reward ${name} returned ${v === undefined ? 'undefined' : typeof v} (give a number, or null where it does not apply)`,
    );
  };
  return (input, signal) => {
    const result: unknown = fn(input, signal);
    return result instanceof Promise ? result.then(value) : value(result);
  };
}
