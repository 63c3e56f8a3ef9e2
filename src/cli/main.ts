import { createProgram } from './program.ts';

try {
  await createProgram().parseAsync(process.argv);
} catch (err) {
  // Print the message and leave: tfjs-backend-wasm installs an uncaughtException handler that
  // would rethrow with a page of minified source.
  console.error(`error: ${(err as Error).message}`);
  process.exit(1);
}
