import { pathToFileURL } from 'node:url';

/**
 * Imports a module of the user's (a pipeline, a reward) by path. A `.ts` file outside a package with
 * `"type": "module"` loads as CommonJS, where its `export`s fail with an error about require() and ES
 * modules that does not say what to do: that one gets the fix, every other failure the file's name.
 */
export async function importModule(file: string, what: string): Promise<Record<string, unknown>> {
  try {
    return (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (error) {
    const message = (error as Error).message;
    throw new Error(
      /require\(\) (of )?ES Module|Cannot use import statement outside a module/.test(message)
        ? `${file} loads as CommonJS, and ${what} must be an ES module: name it .mts, or put a package.json with "type": "module" beside it (${message})`
        : `${file} failed to load: ${message}`,
      { cause: error },
    );
  }
}
