import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { importModule } from '../importModule.ts';
import { checkRecipe, isRecipe, Recipe } from '../recipe/recipe.ts';
import { checkTopology, Topology, trlNameHints } from '../topology/topology.ts';
import { describeIssues } from '../validation.ts';
import type { z } from 'zod';

export const PIPELINES_DIR = fileURLToPath(new URL('../../pipelines/', import.meta.url));

export type Pipeline = { kind: 'topology'; topology: Topology } | { kind: 'recipe'; recipe: Recipe };

/**
 * A pipeline by name (pipelines/<name>.ts) or by path to a module whose default export is a topology
 * (one GRPO run) or a recipe (stages, made with defineRecipe).
 */
export async function loadAnyPipeline(nameOrPath: string): Promise<Pipeline> {
  const path = isAbsolute(nameOrPath) ? nameOrPath : resolve(nameOrPath);
  const candidates = [path, join(PIPELINES_DIR, `${nameOrPath}.ts`)];
  const file = candidates.find((f) => existsSync(f) && MODULE.test(f));
  if (!file) {
    throw new Error(
      existsSync(path)
        ? `${nameOrPath} is not a TypeScript or JavaScript module (.ts, .mts, .js or .mjs)`
        : `No pipeline "${nameOrPath}": expected pipelines/${nameOrPath}.ts or a path to a .ts module`,
    );
  }
  const mod: { default?: unknown } = await importModule(file, 'a pipeline');
  if (isRecipe(mod.default)) {
    const parsed = Recipe.safeParse(mod.default);
    if (!parsed.success)
      throw new Error(`${file} does not export a valid recipe as default:\n${listIssues(parsed.error)}`);
    return { kind: 'recipe', recipe: crossChecked(file, () => checkRecipe(parsed.data)) };
  }
  const parsed = Topology.safeParse(mod.default);
  if (!parsed.success)
    throw new Error(`${file} does not export a valid topology as default:\n${listIssues(parsed.error)}`);
  return { kind: 'topology', topology: crossChecked(file, () => checkTopology(parsed.data)) };
}

/**
 * The checks across fields beyond the schema (checkTopology, checkRecipe: heads dividing the width,
 * stages reading earlier stages, ...), for a module that exported a plain object, named by its file.
 */
function crossChecked<T>(file: string, check: () => T): T {
  try {
    return check();
  } catch (error) {
    throw new Error(`${file}: ${(error as Error).message}`);
  }
}

/** The files a pipeline may be. */
const MODULE = /\.(ts|mts|js|mjs)$/;

/** A schema's complaints, a line each (`  model.dModel: Invalid input: expected number, received undefined`). */
function listIssues(error: z.ZodError): string {
  const issues = describeIssues(error);
  const shown = issues.slice(0, 20).map(({ path, message }) => `  ${path}: ${message}`);
  if (issues.length > shown.length) shown.push(`  ... and ${issues.length - shown.length} more`);
  return [...shown, ...trlNameHints(error).map((line) => `  ${line}`)].join('\n');
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
