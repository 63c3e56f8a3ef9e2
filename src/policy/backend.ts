/**
 * Picks the TensorFlow.js compute backend once per process.
 *
 * auto: tfjs-node-gpu (CUDA) if installed, else tfjs-node (native CPU), else WebAssembly with
 * SIMD, else the plain JS `cpu` backend. Forcing a backend that is not installed throws and says
 * how to install it: there is no silent fallback.
 *
 * The native packages are optional: their install script downloads libtensorflow, which some
 * machines cannot do, so they are never imported statically, only probed and loaded here.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { gemmKernelInstalled, installGemmKernel, matmulThreads, setMatmulThreads } from './gemmKernel.ts';
import { withSharedHeap } from './sharedHeap.ts';
import { installSimdKernels } from './simdKernels.ts';
import { installWasmKernels } from './wasmKernels.ts';
import { BACKEND_REQUESTS, type BackendKind, type BackendRequest } from './backendRequest.ts';

export { BACKEND_REQUESTS, type BackendKind, type BackendRequest };

const require = createRequire(import.meta.url);

const NATIVE_PACKAGE = {
  'tensorflow-gpu': '@tensorflow/tfjs-node-gpu',
  tensorflow: '@tensorflow/tfjs-node',
} as const;

let active: { kind: BackendKind; ready: Promise<BackendKind> } | undefined;

/**
 * Makes `requested` the tfjs backend and resolves to the kind in use. Idempotent: a second call
 * with the same request (or 'auto') returns the backend already set up.
 */
export function selectBackend(requested: BackendRequest = 'auto'): Promise<BackendKind> {
  if (!(BACKEND_REQUESTS as readonly string[]).includes(requested))
    return Promise.reject(
      new Error(`unknown backend '${String(requested)}': choose one of ${BACKEND_REQUESTS.join(', ')}`),
    );
  if (active && (requested === 'auto' || requested === active.kind)) return active.ready;
  const kind = requested === 'auto' ? autoKind() : requested;
  const ready = setUp(kind);
  active = { kind, ready };
  ready.catch(() => {
    if (active?.ready === ready) active = undefined;
  });
  return ready;
}

function autoKind(): BackendKind {
  if (isInstalled(NATIVE_PACKAGE['tensorflow-gpu'])) return 'tensorflow-gpu';
  if (isInstalled(NATIVE_PACKAGE.tensorflow)) return 'tensorflow';
  if (isInstalled('@tensorflow/tfjs-backend-wasm')) return 'wasm';
  return 'cpu';
}

function isInstalled(pkg: string): boolean {
  try {
    require.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

function missing(kind: BackendKind, pkg: string): Error {
  return new Error(
    `The '${kind}' backend was requested but ${pkg} is not installed. ` +
      `Install it with \`npm install ${pkg}@${tf.version.tfjs}\` (same version as @tensorflow/tfjs), ` +
      `or choose another backend ('auto' picks the best one installed).`,
  );
}

async function setUp(kind: BackendKind): Promise<BackendKind> {
  if (kind === 'tensorflow-gpu' || kind === 'tensorflow') {
    const pkg = NATIVE_PACKAGE[kind];
    if (!isInstalled(pkg)) throw missing(kind, pkg);
    // Importing the package registers its backend, named 'tensorflow' for both CPU and GPU builds.
    try {
      await import(pkg);
    } catch (error) {
      throw new Error(
        `${pkg} is installed but failed to load (${(error as Error).message}); ` +
          `reinstall it, or request the 'wasm' backend explicitly.`,
        { cause: error },
      );
    }
    await activate('tensorflow', kind);
  } else if (kind === 'wasm') {
    const pkg = '@tensorflow/tfjs-backend-wasm';
    if (!isInstalled(pkg)) throw missing(kind, pkg);
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    // The .wasm binaries sit beside the package's main file (dist/); tfjs picks the SIMD one
    // itself (its threaded build is disabled under Node). The trailing separator makes it a prefix.
    wasm.setWasmPaths(path.dirname(require.resolve(pkg)) + path.sep);
    // On a shared heap, so that rxrl's kernels can split their work with helper threads in place.
    await withSharedHeap(() => activate('wasm', kind));
    installWasmKernels(wasm.version_wasm);
    await installSimdKernels(wasm.version_wasm);
    // After installWasmKernels: it keeps that BatchMatMul for what it does not take.
    await installGemmKernel(wasm.version_wasm);
  } else {
    await activate('cpu', kind);
  }
  return kind;
}

/**
 * Runs the selected backend's large kernels on `count` threads and resolves to the count in effect.
 * On wasm that is rxrl's kernels (matmul, attention, LayerNorm, GELU, AdamW...) with count - 1 helper
 * threads on the shared heap (gemmKernel.ts, kernelThreads.ts; 1 where the heap could not be shared);
 * the native backends use TensorFlow's own thread pool, and the plain JS backend one thread, so there
 * it is 1.
 */
export async function setBackendThreads(count: number): Promise<number> {
  if (!Number.isInteger(count) || count < 1)
    throw new Error(`threads must be a whole number >= 1, got ${count}`);
  if (active === undefined || (await active.ready) !== 'wasm') return 1;
  await setMatmulThreads(count);
  // Where rxrl's matmul is not installed (no relaxed SIMD), XNNPACK's runs on this thread; where the
  // heap is not shared, rxrl's has no helpers.
  return gemmKernelInstalled() ? matmulThreads().count : 1;
}

/**
 * Runs `fn` with the backend's matmuls on `count` threads (setBackendThreads), then puts back the
 * count before: for work that runs while this process's other workers wait (pretraining, SFT).
 */
export async function withBackendThreads<T>(count: number, fn: () => Promise<T>): Promise<T> {
  const before = matmulThreads().count;
  await setBackendThreads(count);
  try {
    return await fn();
  } finally {
    await setBackendThreads(before);
  }
}

async function activate(tfName: string, kind: BackendKind): Promise<void> {
  const ok = await tf.setBackend(tfName);
  if (!ok) throw new Error(`The '${kind}' backend is installed but failed to initialise (tfjs '${tfName}').`);
  await tf.ready();
}
