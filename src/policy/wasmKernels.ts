/**
 * Faster versions of four kernels of the WebAssembly backend (tfjs-backend-wasm 4.x), installed by
 * `selectBackend('wasm')`. Each computes what the stock kernel computes; only the path differs (a
 * matmul's sums may round differently, as XNNPACK's already do for the unbatched case).
 *
 * BatchMatMul. The stock kernel hands a matmul to XNNPACK only when it has no transpose flag and a
 * batch of 1; anything else (every attention matmul, and the gradients tfjs writes with transpose
 * flags) runs a scalar triple loop at about 1 GFLOP/s, 10-30x slower than XNNPACK here. This
 * kernel transposes explicitly (the wasm Transpose kernel is fast) and runs one XNNPACK matmul per
 * batch entry, on views of the inputs: it registers each entry's slice of the wasm heap as a tensor
 * of the C++ side (no copy), calls the backend's own BatchMatMul entry point with batch 1, and
 * unregisters the views, which also frees the XNNPACK operator cached on them.
 *
 * Slice. The stock kernel reads its input with `readSync`, which copies the whole input out of the
 * wasm heap for every slice. This kernel reads the input in place, as the stock kernel already does
 * for its output.
 *
 * SplitV. The stock kernel calls the stock Slice function directly (not through the kernel
 * registry), once per piece, so tf.split of a [2048, 384] activation (the attention's q, k, v) still
 * copied all of it out of the heap three times. This one slices each piece with the Slice above.
 *
 * Identity. The stock kernel copies its input; tf.clone runs it, and so does every tensor a
 * tf.customGrad op saves for its gradient (GPT's layers save their activations: a copy of each per
 * step). Tensors are immutable, so this kernel shares the input's memory by reference count, as the
 * backend's own Reshape kernel does.
 *
 * They reach into the backend's internals (the data map, the emscripten module, the C++ tensor
 * registry), so they are checked against the stock kernels by test/policy/wasmKernels.test.ts and
 * installed only on the tfjs-backend-wasm version they were written against (4.x); any other
 * version keeps the stock kernels.
 */
import * as tf from '@tensorflow/tfjs';

/** The parts of tfjs-backend-wasm's BackendWasm these kernels use. */
interface WasmBackend {
  dataIdMap: { get(dataId: object): { id: number; memoryOffset: number } };
  dataIdNextNumber: number;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  disposeData(dataId: object): boolean;
  incRef(dataId: object): void;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
  wasm: {
    cwrap(name: string, returns: null, args: string[]): (...args: unknown[]) => void;
    tfjs: { registerTensor(id: number, size: number, offset: number): void; disposeData(id: number): void };
  };
}

type KernelArgs = {
  inputs: Record<string, tf.TensorInfo>;
  backend: unknown;
  attrs?: Record<string, unknown>;
};

let installed: tf.KernelConfig[] | undefined;

/** Replaces the wasm BatchMatMul, Slice, SplitV and Identity kernels; idempotent. Returns false if not applicable. */
export function installWasmKernels(wasmVersion: string): boolean {
  if (installed) return true;
  if (!wasmVersion.startsWith('4.')) return false;
  const batchMatMul = tf.getKernel('BatchMatMul', 'wasm');
  const slice = tf.getKernel('Slice', 'wasm');
  const splitV = tf.getKernel('SplitV', 'wasm');
  const identity = tf.getKernel('Identity', 'wasm');
  const transpose = tf.getKernel('Transpose', 'wasm');
  if (!batchMatMul || !slice || !splitV || !identity || !transpose) return false;
  installed = [batchMatMul, slice, splitV, identity];
  replace(batchMatMul, fastBatchMatMul(batchMatMul.kernelFunc, transpose.kernelFunc));
  const fastSlice = inPlaceSlice(slice.kernelFunc);
  replace(slice, fastSlice);
  replace(splitV, splitBySlices(fastSlice));
  replace(identity, sharedIdentity(identity.kernelFunc));
  return true;
}

/** Whether rxrl's kernels are in place of the stock ones. */
export function wasmKernelsInstalled(): boolean {
  return installed !== undefined;
}

/** Puts the stock kernels back (for tests that compare the two). */
export function uninstallWasmKernels(): void {
  if (!installed) return;
  for (const stock of installed) {
    tf.unregisterKernel(stock.kernelName, 'wasm');
    tf.registerKernel(stock);
  }
  installed = undefined;
}

function replace(stock: tf.KernelConfig, kernelFunc: tf.KernelFunc): void {
  tf.unregisterKernel(stock.kernelName, 'wasm');
  // No setupFunc: the stock one already ran when the backend started, and ours sets up lazily.
  tf.registerKernel({ kernelName: stock.kernelName, backendName: 'wasm', kernelFunc });
}

/** Fewer rows per batch entry than this go to the stock kernel (measured: decoding, 1 row, is slower per entry). */
const MIN_ROWS = 8;

function fastBatchMatMul(stock: tf.KernelFunc, transposeKernel: tf.KernelFunc): tf.KernelFunc {
  let wasmBatchMatMul: ((...args: unknown[]) => void) | undefined;
  return (args) => {
    const { inputs, attrs } = args as KernelArgs;
    const backend = args.backend as unknown as WasmBackend;
    const a = inputs.a!;
    const b = inputs.b!;
    const transposeA = attrs?.transposeA === true;
    const transposeB = attrs?.transposeB === true;
    const batchA = a.shape.slice(0, -2);
    const batchB = b.shape.slice(0, -2);
    const batch = batchA.reduce((n, s) => n * s, 1);
    // The stock kernel already takes the XNNPACK path for these, and handles broadcasting batches.
    if (
      (batch === 1 && !transposeA && !transposeB) ||
      a.dtype !== 'float32' ||
      b.dtype !== 'float32' ||
      a.shape.includes(0) ||
      b.shape.includes(0) ||
      !tf.util.arraysEqual(batchA, batchB)
    ) {
      return stock(args);
    }
    // A decoding step multiplies one query row per entry: there the per-entry call costs more than
    // the stock loop saves.
    const rows = transposeA ? a.shape[a.shape.length - 1]! : a.shape[a.shape.length - 2]!;
    if (rows < MIN_ROWS) return stock(args);
    const transposed = (x: tf.TensorInfo, flag: boolean): tf.TensorInfo => {
      if (!flag) return x;
      const rank = x.shape.length;
      const perm = [...Array(rank - 2).keys(), rank - 1, rank - 2];
      return transposeKernel({ inputs: { x }, backend: args.backend, attrs: { perm } }) as tf.TensorInfo;
    };
    const left = transposed(a, transposeA);
    const right = transposed(b, transposeB);
    const [M, K] = left.shape.slice(-2) as [number, number];
    const N = right.shape[right.shape.length - 1]!;
    const out = backend.makeOutput([...batchA, M, N], 'float32');
    wasmBatchMatMul ??= backend.wasm.cwrap('BatchMatMul', null, [
      'number',
      'array',
      'number',
      'number',
      'array',
      'number',
      'number',
      'number',
      'number',
    ]);
    const leftOffset = backend.dataIdMap.get(left.dataId).memoryOffset;
    const rightOffset = backend.dataIdMap.get(right.dataId).memoryOffset;
    const outOffset = backend.dataIdMap.get(out.dataId).memoryOffset;
    const aShape = new Uint8Array(new Int32Array([1, M, K]).buffer);
    const bShape = new Uint8Array(new Int32Array([1, K, N]).buffer);
    const { registerTensor, disposeData } = backend.wasm.tfjs;
    for (let i = 0; i < batch; i++) {
      const aId = backend.dataIdNextNumber++;
      const bId = backend.dataIdNextNumber++;
      const outId = backend.dataIdNextNumber++;
      registerTensor(aId, M * K, leftOffset + i * M * K * 4);
      registerTensor(bId, K * N, rightOffset + i * K * N * 4);
      registerTensor(outId, M * N, outOffset + i * M * N * 4);
      wasmBatchMatMul(aId, aShape, 3, bId, bShape, 3, false, false, outId);
      // Unregistering the weights view also deletes the XNNPACK operator cached on its id.
      disposeData(aId);
      disposeData(bId);
      disposeData(outId);
    }
    if (left !== a) backend.disposeData(left.dataId);
    if (right !== b) backend.disposeData(right.dataId);
    return out;
  };
}

function sharedIdentity(stock: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const x = (args as KernelArgs).inputs.x!;
    if (x.dtype === 'string') return stock(args);
    (args.backend as unknown as WasmBackend).incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  };
}

function inPlaceSlice(stock: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { inputs, attrs } = args as KernelArgs;
    const backend = args.backend as unknown as WasmBackend;
    const x = inputs.x!;
    if (x.dtype === 'string') return stock(args);
    const [begin = [], size = []] = tf.slice_util.parseSliceParams(
      x as unknown as tf.Tensor,
      attrs!.begin as number[],
      attrs!.size as number[],
    );
    const out = backend.makeOutput(size, x.dtype);
    const outVals = backend.typedArrayFromHeap(out);
    // A view of the input on the heap; made after makeOutput, whose allocation may grow the heap.
    const xVals = backend.typedArrayFromHeap(x);
    copySlice(xVals, x.shape, outVals, begin, size);
    return out;
  };
}

/** SplitV as the stock kernel computes it (pieces along one axis), each piece cut by `slice`. */
function splitBySlices(slice: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { inputs, attrs, backend } = args as KernelArgs;
    const x = inputs.x!;
    const [axis] = tf.util.parseAxisParam(attrs!.axis as number | number[], x.shape);
    const sizes = tf.backend_util.prepareSplitSize(
      x as unknown as tf.Tensor,
      attrs!.numOrSizeSplits as number | number[],
      axis!,
    );
    const begin = new Array<number>(x.shape.length).fill(0);
    return sizes.map((s) => {
      const size = [...x.shape];
      size[axis!] = s;
      const piece = slice({ inputs: { x }, attrs: { begin: [...begin], size }, backend } as never);
      begin[axis!]! += s;
      return piece as tf.TensorInfo;
    });
  };
}

/** Copies the box begin..begin+size of x (row-major, shape xShape) into out, row by row. */
function copySlice(
  x: ArrayLike<number> & { subarray(start: number, end: number): ArrayLike<number> },
  xShape: number[],
  out: { set(values: ArrayLike<number>, offset: number): void },
  begin: number[],
  size: number[],
): void {
  const rank = xShape.length;
  const strides = tf.util.computeStrides(xShape);
  // Trailing axes taken whole form one contiguous run.
  let inner = rank - 1;
  while (inner > 0 && begin[inner] === 0 && size[inner] === xShape[inner]) inner--;
  const run = size.slice(inner).reduce((n, s) => n * s, 1);
  const outer = size.slice(0, inner);
  const count = outer.reduce((n, s) => n * s, 1);
  const index = new Array<number>(inner).fill(0);
  let outOffset = 0;
  for (let r = 0; r < count; r++) {
    let offset = begin[inner]! * (strides[inner] ?? 1);
    for (let d = 0; d < inner; d++) offset += (begin[d]! + index[d]!) * strides[d]!;
    out.set(x.subarray(offset, offset + run), outOffset);
    outOffset += run;
    for (let d = inner - 1; d >= 0; d--) {
      if (++index[d]! < outer[d]!) break;
      index[d] = 0;
    }
  }
}
