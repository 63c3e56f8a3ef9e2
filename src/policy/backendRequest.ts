/**
 * The tfjs backends one may ask for, in a module of their own so that the CLI can list them without
 * loading tfjs. 'auto' picks the best one installed: tfjs-node-gpu, tfjs-node, wasm, then cpu.
 */
export const BACKEND_REQUESTS = ['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendRequest = (typeof BACKEND_REQUESTS)[number];
export type BackendKind = Exclude<BackendRequest, 'auto'>;
