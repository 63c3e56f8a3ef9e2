import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { isRecipe, Recipe } from '../recipe/recipe.ts';
import { Topology } from '../topology/topology.ts';

export const PIPELINES_DIR = fileURLToPath(new URL('../../pipelines/', import.meta.url));

export type Pipeline = { kind: 'topology'; topology: Topology } | { kind: 'recipe'; recipe: Recipe };

/**
 * A pipeline by name (pipelines/<name>.ts) or by path to a module whose default export is a topology
 * (one GRPO run) or a recipe (stages, made with defineRecipe).
 */
export async function loadAnyPipeline(nameOrPath: string): Promise<Pipeline> {
  const candidates = [
    isAbsolute(nameOrPath) ? nameOrPath : resolve(nameOrPath),
    join(PIPELINES_DIR, `${nameOrPath}.ts`),
  ];
  const file = candidates.find((f) => existsSync(f) && f.endsWith('.ts'));
  if (!file) {
    throw new Error(
      `No pipeline "${nameOrPath}": expected pipelines/${nameOrPath}.ts or a path to a .ts module`,
    );
  }
  const mod = (await import(pathToFileURL(file).href)) as { default?: unknown };
  if (isRecipe(mod.default)) {
    const parsed = Recipe.safeParse(mod.default);
    if (!parsed.success)
      throw new Error(`${file} does not export a valid recipe as default: ${parsed.error.message}`);
    return { kind: 'recipe', recipe: parsed.data };
  }
  const parsed = Topology.safeParse(mod.default);
  if (!parsed.success)
    throw new Error(`${file} does not export a valid topology as default: ${parsed.error.message}`);
  return { kind: 'topology', topology: parsed.data };
}

/** The topology of a pipeline; for a recipe, the one its stages start from (its task, model and eval). */
export async function loadPipeline(nameOrPath: string): Promise<Topology> {
  const pipeline = await loadAnyPipeline(nameOrPath);
  return pipeline.kind === 'topology' ? pipeline.topology : pipeline.recipe.topology;
}

/** Where `rxrl run` writes a pipeline's metrics, checkpoint and summary unless told otherwise. */
export function defaultRunDir(pipeline: string): string {
  return join('runs', pipeline);
}
