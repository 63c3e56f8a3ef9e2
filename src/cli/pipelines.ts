import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Topology } from '../topology/topology.ts';

export const PIPELINES_DIR = fileURLToPath(new URL('../../pipelines/', import.meta.url));

/** A pipeline by name (pipelines/<name>.ts) or by path to a module whose default export is a topology. */
export async function loadPipeline(nameOrPath: string): Promise<Topology> {
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
  const parsed = Topology.safeParse(mod.default);
  if (!parsed.success)
    throw new Error(`${file} does not export a valid topology as default: ${parsed.error.message}`);
  return parsed.data;
}

/** Where `rxrl run` writes a pipeline's metrics, checkpoint and summary unless told otherwise. */
export function defaultRunDir(pipeline: string): string {
  return join('runs', pipeline);
}
