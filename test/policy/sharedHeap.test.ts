import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import wabtInit from 'wabt';
import {
  importSharedMemory,
  SHARED_HEAP_MAX_PAGES,
  withSharedHeap,
  type SharedMemory,
} from '../../src/policy/sharedHeap.ts';
import type { WasmBackend } from '../../src/policy/simdKernels.ts';
import { useWasm } from './helpers.ts';

const { Memory, Instance, Module } = (
  globalThis as unknown as {
    WebAssembly: {
      Memory: new (d: { initial: number; maximum: number; shared: boolean }) => SharedMemory;
      Module: (new (bytes: Uint8Array) => object) & {
        imports(module: object): { module: string; name: string; kind: string }[];
      };
      Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
    };
  }
).WebAssembly;

async function binaryOf(wat: string): Promise<Uint8Array> {
  const parsed = (await wabtInit()).parseWat('test.wat', wat, { threads: true });
  try {
    return parsed.toBinary({}).buffer;
  } finally {
    parsed.destroy();
  }
}

const sharedMemory = (initial: number): SharedMemory =>
  new Memory({ initial, maximum: SHARED_HEAP_MAX_PAGES, shared: true });

beforeAll(useWasm);

describe('importSharedMemory', () => {
  it("turns a module's own memory into an imported shared one: same size, data and exports", async () => {
    const { binary, initialPages } = importSharedMemory(
      await binaryOf(`(module (memory (export "memory") 3 65536) (data (i32.const 100) "rx")
        (func (export "byte") (param i32) (result i32) (i32.load8_u (local.get 0))))`),
    );
    expect(initialPages).toBe(3);
    const memory = sharedMemory(3);
    const { exports } = new Instance(new Module(binary), { env: { memory } });
    // The data segment was written into the memory given, which is the one exported.
    expect(exports.memory).toBe(memory);
    expect(new Uint8Array(memory.buffer, 100, 2)).toEqual(new TextEncoder().encode('rx'));
    expect((exports.byte as (at: number) => number)(101)).toBe('x'.charCodeAt(0));
    // It grows in place, seen by the module.
    memory.grow(1);
    new Uint8Array(memory.buffer)[4 * 65536 - 1] = 7;
    expect((exports.byte as (at: number) => number)(4 * 65536 - 1)).toBe(7);
  });

  it('adds the memory after the imports there are, leaving function indices as they were', async () => {
    const { binary } = importSharedMemory(
      await binaryOf(`(module (import "env" "f" (func $f (result i32))) (memory 1)
        (func (export "g") (result i32) (i32.add (call $f) (i32.const 1))))`),
    );
    const { exports } = new Instance(new Module(binary), { env: { f: () => 41, memory: sharedMemory(1) } });
    expect((exports.g as () => number)()).toBe(42);
    // A module with no imports, its memory its last section, gets an import section before it.
    const alone = new Module(importSharedMemory(await binaryOf('(module (memory 1))')).binary);
    expect(Module.imports(alone)).toEqual([{ module: 'env', name: 'memory', kind: 'memory' }]);
    expect(() => new Instance(alone, {})).toThrow(/memory|env/);
  });

  it('says why it cannot rewrite a module', async () => {
    expect(() => importSharedMemory(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]))).toThrow(
      'importSharedMemory: not a WebAssembly binary',
    );
    expect(() => importSharedMemory(new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 5, 9, 1]))).toThrow(
      'section 5 runs past the end of the binary',
    );
    const noMemory = await binaryOf('(module (func (export "f")))');
    expect(() => importSharedMemory(noMemory)).toThrow('the module defines no memory of its own');
    const imported = await binaryOf('(module (import "env" "memory" (memory 1)))');
    expect(() => importSharedMemory(imported)).toThrow('the module defines no memory of its own');
    const shared = await binaryOf('(module (memory 1 2 shared))');
    expect(() => importSharedMemory(shared)).toThrow(
      'its memory is already shared or 64-bit (limits flags 3)',
    );
  });
});

describe('withSharedHeap', () => {
  const { WebAssembly: wasm } = globalThis as unknown as {
    WebAssembly: {
      instantiate(b: Uint8Array, i: object): Promise<{ instance: { exports: Record<string, unknown> } }>;
    };
  };
  const instantiate = (binary: Uint8Array, imports: object) => wasm.instantiate(binary, imports);
  const emscripten = { env: { emscripten_resize_heap: () => 0 } };
  const RESIZE = '(import "env" "emscripten_resize_heap" (func (param i32) (result i32)))';

  it("gives tfjs's instantiation a shared memory, passes others through, and puts WebAssembly.instantiate back", async () => {
    const original = wasm.instantiate;
    const tfjsLike = await binaryOf(
      `(module ${RESIZE} (memory (export "memory") 2) (func (export "register_tensor")))`,
    );
    const { result, memory } = await withSharedHeap(() => instantiate(tfjsLike, emscripten));
    expect(memory?.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(result.instance.exports.memory).toBe(memory);
    expect(memory!.buffer.byteLength).toBe(2 * 65536);
    expect(wasm.instantiate).toBe(original);
    // Another Emscripten module (no register_tensor export) keeps its own memory.
    const other = await binaryOf(`(module ${RESIZE} (memory (export "memory") 2))`);
    const plain = await withSharedHeap(() => instantiate(other, emscripten));
    expect(plain.memory).toBeUndefined();
    expect((plain.result.instance.exports.memory as SharedMemory).buffer).toBeInstanceOf(ArrayBuffer);
  });

  it('leaves a module it cannot rewrite as it is', async () => {
    const binary = await binaryOf(
      `(module ${RESIZE} (func (export "register_tensor")) (func (export "seven") (result i32) (i32.const 7)))`,
    );
    const { result, memory } = await withSharedHeap(() => instantiate(binary, emscripten));
    expect(memory).toBeUndefined();
    expect((result.instance.exports.seven as () => number)()).toBe(7);
  });
});

describe('the wasm backend', () => {
  it('runs on a shared heap, and keeps it across growth', () => {
    const backend = tf.backend() as unknown as WasmBackend & { wasm: { HEAPU8: Uint8Array } };
    expect(backend.wasm.asm?.memory?.buffer).toBeInstanceOf(SharedArrayBuffer);
    const before = backend.wasm.asm!.memory!.buffer.byteLength;
    // 256 MiB more than the heap holds: it must grow, and the values written stay readable.
    const big = tf.fill([before / 4 + 2 ** 26], 2.5);
    const sum = tf.sum(big.slice([before / 4], [1024]));
    expect(sum.dataSync()[0]).toBe(2560);
    // tfjs's views of the heap follow it.
    expect(backend.wasm.HEAPU8.buffer.byteLength).toBe(backend.wasm.asm!.memory!.buffer.byteLength);
    expect(backend.wasm.HEAPU8.buffer.byteLength).toBeGreaterThan(before);
    tf.dispose([big, sum]);
  });
});
