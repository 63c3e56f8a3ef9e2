/**
 * tfjs-backend-wasm's heap as a shared WebAssembly.Memory, so that rxrl's kernels can run on helper
 * threads in place (kernelThreads.ts), with no copies in or out.
 *
 * Why a rewrite: tfjs's single-threaded binaries (the ones it uses under Node: it disables its
 * threaded build there) define their memory themselves, unshared, and a memory cannot become shared
 * after the fact. The rewrite moves that one memory definition into an import of a shared memory of
 * the same initial size, which tfjs's instantiation is then given. Nothing else in the module
 * changes: the memory keeps index 0 and its export, every load and store is the same instruction
 * (V8 reserves a shared memory's whole maximum up front, so there are no bounds checks either way),
 * and Emscripten's glue reads the memory back from the export as before. Growth works too: a shared
 * memory grows in place, and every thread sees the new size.
 */

/** The WebAssembly JS API, a Node global that the ES library this project compiles against does not type. */
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => SharedMemory;
  validate(bytes: Uint8Array): boolean;
  instantiate(source: unknown, imports?: Record<string, Record<string, unknown>>): Promise<unknown>;
};

/** A shared WebAssembly.Memory. */
export interface SharedMemory {
  readonly buffer: SharedArrayBuffer;
  grow(pages: number): number;
}

/** Pages of 64 KiB that the shared heap may grow to: wasm32's 4 GiB, as tfjs's own binaries declare. */
export const SHARED_HEAP_MAX_PAGES = 65536;

/** What a WAT module of rxrl's kernels imports tfjs's heap as: unshared, or (withSharedHeap's) shared. */
export function memoryImport(shared: boolean): string {
  return shared
    ? `(import "env" "memory" (memory 1 ${SHARED_HEAP_MAX_PAGES} shared))`
    : '(import "env" "memory" (memory 1))';
}

const SECTION = { import: 2, memory: 5, export: 7 } as const;
const MEMORY_KIND = 0x02;
/** Limits flags: 0x01 has a maximum, 0x02 shared. */
const LIMITS_MAX_SHARED = 0x03;

/**
 * `binary` with its one defined memory turned into an import of env.memory, shared, of the same
 * initial size and SHARED_HEAP_MAX_PAGES at most. Throws, naming what it found, for a module it
 * cannot rewrite (no memory of its own, several, or one already shared or 64-bit).
 */
export function importSharedMemory(binary: Uint8Array): { binary: Uint8Array; initialPages: number } {
  if (
    binary.length < 8 ||
    binary[0] !== 0x00 ||
    binary[1] !== 0x61 ||
    binary[2] !== 0x73 ||
    binary[3] !== 0x6d
  )
    throw new Error('importSharedMemory: not a WebAssembly binary (no \\0asm header)');
  if (binary[4] !== 1 || binary[5] !== 0 || binary[6] !== 0 || binary[7] !== 0)
    throw new Error(`importSharedMemory: WebAssembly binary version ${binary[4]}, not 1`);
  const sections: { id: number; body: Uint8Array }[] = [];
  for (let at = 8; at < binary.length;) {
    const id = binary[at]!;
    const [size, start] = readU32(binary, at + 1);
    if (start + size > binary.length)
      throw new Error(`importSharedMemory: section ${id} runs past the end of the binary`);
    sections.push({ id, body: binary.subarray(start, start + size) });
    at = start + size;
  }
  const memories = sections.filter((s) => s.id === SECTION.memory);
  if (memories.length === 0) throw new Error('importSharedMemory: the module defines no memory of its own');
  if (memories.length > 1) throw new Error('importSharedMemory: the module has several memory sections');
  const [count, flagsAt] = readU32(memories[0]!.body, 0);
  if (count !== 1) throw new Error(`importSharedMemory: the module defines ${count} memories, not 1`);
  const flags = memories[0]!.body[flagsAt]!;
  if (flags > 0x01)
    throw new Error(`importSharedMemory: its memory is already shared or 64-bit (limits flags ${flags})`);
  const [initialPages] = readU32(memories[0]!.body, flagsAt + 1);
  const entry = [
    ...name('env'),
    ...name('memory'),
    MEMORY_KIND,
    LIMITS_MAX_SHARED,
    ...u32(initialPages),
    ...u32(SHARED_HEAP_MAX_PAGES),
  ];
  const parts: Uint8Array[] = [binary.subarray(0, 8)];
  const push = (id: number, body: Uint8Array): void => {
    parts.push(Uint8Array.from([id, ...u32(body.length)]), body);
  };
  let imported = false;
  for (const { id, body } of sections) {
    // The import goes last among the imports (memory imports take memory indices only: function,
    // table and global indices stay as they were), or in a new import section where the module has
    // none, which must come before the sections with ids above it (custom sections, id 0, aside).
    if (!imported && id > SECTION.import) {
      push(SECTION.import, Uint8Array.from([...u32(1), ...entry]));
      imported = true;
    }
    if (id === SECTION.memory) continue;
    if (id === SECTION.import) {
      const [n, rest] = readU32(body, 0);
      push(id, concat([Uint8Array.from(u32(n + 1)), body.subarray(rest), Uint8Array.from(entry)]));
      imported = true;
    } else {
      push(id, body);
    }
  }
  return { binary: concat(parts), initialPages };
}

/**
 * Runs `start` (which instantiates tfjs-backend-wasm: tf.setBackend('wasm')) with the Emscripten
 * module's instantiation given `binary` rewritten by importSharedMemory and a shared memory, and
 * resolves to what `start` does and that memory (undefined where the instantiation was not seen, the
 * rewritten module did not validate, or the memory could not be made: tfjs's own runs then, unchanged,
 * and rxrl's kernels run without helper threads). tfjs's instantiation is recognised by Emscripten's
 * import env.emscripten_resize_heap and tfjs's export register_tensor.
 */
export async function withSharedHeap<T>(
  start: () => Promise<T>,
): Promise<{ result: T; memory: SharedMemory | undefined }> {
  const original = WebAssembly.instantiate;
  let memory: SharedMemory | undefined;
  const instantiate = (
    source: unknown,
    imports?: Record<string, Record<string, unknown>>,
  ): Promise<unknown> => {
    const env = imports?.env;
    const bytes =
      source instanceof ArrayBuffer
        ? new Uint8Array(source)
        : ArrayBuffer.isView(source)
          ? new Uint8Array(source.buffer, source.byteOffset, source.byteLength)
          : undefined;
    if (
      memory !== undefined ||
      bytes === undefined ||
      env?.emscripten_resize_heap === undefined ||
      !exportNames(bytes).includes('register_tensor')
    )
      return original.call(WebAssembly, source, imports);
    let rewritten: { binary: Uint8Array; initialPages: number };
    let shared: SharedMemory;
    try {
      rewritten = importSharedMemory(bytes);
      if (!WebAssembly.validate(rewritten.binary)) throw new Error('the rewritten module does not validate');
      // A shared memory reserves its whole maximum of address space up front, which a process
      // limited in virtual memory may refuse.
      shared = new WebAssembly.Memory({
        initial: rewritten.initialPages,
        maximum: SHARED_HEAP_MAX_PAGES,
        shared: true,
      });
    } catch {
      return original.call(WebAssembly, source, imports);
    }
    memory = shared;
    // Should the rewritten module still fail to instantiate, tfjs's own is instantiated instead.
    return original
      .call(WebAssembly, rewritten.binary, { ...imports, env: Object.assign(env, { memory }) })
      .catch(() => {
        memory = undefined;
        return original.call(WebAssembly, source, imports);
      });
  };
  WebAssembly.instantiate = instantiate;
  try {
    return { result: await start(), memory };
  } finally {
    // Unless someone patched it again meanwhile (theirs would then put back this one's).
    if (WebAssembly.instantiate === instantiate) WebAssembly.instantiate = original;
  }
}

/** The names a module exports (empty where it cannot be read). */
function exportNames(binary: Uint8Array): string[] {
  try {
    for (let at = 8; at < binary.length;) {
      const id = binary[at]!;
      const [size, start] = readU32(binary, at + 1);
      if (id === SECTION.export) {
        const names: string[] = [];
        let [count, p] = readU32(binary, start);
        for (; count > 0; count--) {
          const [length, from] = readU32(binary, p);
          names.push(new TextDecoder().decode(binary.subarray(from, from + length)));
          // The kind byte, then the index.
          p = readU32(binary, from + length + 1)[1];
        }
        return names;
      }
      at = start + size;
    }
  } catch {
    // Not a module this can read: no names.
  }
  return [];
}

function readU32(bytes: Uint8Array, at: number): [number, number] {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    // The fifth byte holds bits 28-31 only.
    if (byte === undefined || (shift === 28 && byte > 0x0f))
      throw new Error('importSharedMemory: a malformed LEB128 number');
    value |= (byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [value >>> 0, at];
    shift += 7;
  }
}

function u32(value: number): number[] {
  const out: number[] = [];
  do {
    const byte = value & 0x7f;
    value >>>= 7;
    out.push(value === 0 ? byte : byte | 0x80);
  } while (value !== 0);
  return out;
}

function name(text: string): number[] {
  const bytes = new TextEncoder().encode(text);
  return [...u32(bytes.length), ...bytes];
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
