/**
 * A policy's weights as one byte string, for the versions topic (which chunks it under the message limit):
 *
 *   [u32 LE header length][header: JSON [[name, length], ...], space-padded to 4 bytes][float32 LE values]
 *
 * The names keep a worker honest: weights of another model shape fail to decode with the name at fault.
 */
import type { WeightArrays } from '../workers/weights.ts';

export function encodeWeights(weights: WeightArrays): Uint8Array {
  const entries = Object.entries(weights).map(([name, values]) => [name, values.length] as const);
  let header = Buffer.from(JSON.stringify(entries), 'utf8');
  const padded = Math.ceil((4 + header.length) / 4) * 4 - 4;
  header = Buffer.concat([header, Buffer.alloc(padded - header.length, 0x20)]);
  const floats = entries.reduce((n, [, length]) => n + length, 0);
  const out = new Uint8Array(4 + header.length + floats * 4);
  new DataView(out.buffer).setUint32(0, header.length, true);
  out.set(header, 4);
  let offset = 4 + header.length;
  for (const [name] of entries) {
    const values = weights[name]!;
    out.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), offset);
    offset += values.byteLength;
  }
  return out;
}

export function decodeWeights(bytes: Uint8Array): WeightArrays {
  if (bytes.byteLength < 4) throw new Error(`Policy weights: ${bytes.byteLength} bytes is too short`);
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
  if (4 + headerLength > bytes.byteLength) {
    throw new Error(
      `Policy weights: a ${headerLength}-byte header does not fit in ${bytes.byteLength} bytes`,
    );
  }
  let entries: unknown;
  try {
    entries = JSON.parse(Buffer.from(bytes.subarray(4, 4 + headerLength)).toString('utf8'));
  } catch (error) {
    throw new Error(`Policy weights: the header is not JSON: ${(error as Error).message}`);
  }
  if (
    !Array.isArray(entries) ||
    !entries.every(
      (e): e is [string, number] =>
        Array.isArray(e) && typeof e[0] === 'string' && Number.isInteger(e[1]) && (e[1] as number) >= 0,
    )
  ) {
    throw new Error('Policy weights: the header is not a list of [name, length] pairs');
  }
  const floats = entries.reduce((n, [, length]) => n + length, 0);
  const start = 4 + headerLength;
  if (bytes.byteLength !== start + floats * 4) {
    throw new Error(
      `Policy weights: the header lists ${floats} values but ${(bytes.byteLength - start) / 4} follow it`,
    );
  }
  // One aligned copy of the values; each tensor is a view into it.
  const values = new Float32Array(floats);
  new Uint8Array(values.buffer).set(bytes.subarray(start));
  const out: WeightArrays = {};
  let offset = 0;
  for (const [name, length] of entries) {
    out[name] = values.subarray(offset, offset + length);
    offset += length;
  }
  return out;
}
