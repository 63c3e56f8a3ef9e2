/** The commit policy's bookkeeping and the weights reassembler, without a broker. */
import { from, lastValueFrom, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { SCHEMA_VERSION, type PolicyVersion } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { PartitionAcks } from '../../src/transport/kafka/offsets.ts';
import { reassembleWeights, weightsChunks, type VersionsRecord } from '../../src/transport/kafka/weights.ts';

describe('PartitionAcks', () => {
  it('commits up to the first record not acked, never past a gap', () => {
    const acks = new PartitionAcks();
    for (const offset of [10, 11, 12, 14, 15]) acks.deliver(offset); // 13: a transaction marker, never delivered
    expect(acks.ack(11)).toBe(false);
    expect(acks.committable).toBeUndefined();
    expect(acks.ack(10)).toBe(true);
    expect(acks.committable).toBe(12);
    expect(acks.ack(14)).toBe(false);
    expect(acks.committable).toBe(12);
    expect(acks.ack(12)).toBe(true);
    expect(acks.committable).toBe(15);
    expect(acks.ack(15)).toBe(true);
    expect(acks.committable).toBe(16);
  });

  it('keeps up over many records acked in order', () => {
    const acks = new PartitionAcks();
    for (let offset = 0; offset < 100_000; offset++) {
      acks.deliver(offset);
      acks.ack(offset);
    }
    expect(acks.committable).toBe(100_000);
  });
});

describe('reassembleWeights', () => {
  const policy = (version: number): PolicyVersion => ({
    schemaVersion: SCHEMA_VERSION,
    version,
    step: version,
    time: 0,
  });
  const chunks = (version: number, bytes: Uint8Array): VersionsRecord[] =>
    weightsChunks(version, bytes, 4).map((chunk) => ({ kind: 'chunk', chunk }));

  it('yields complete versions in order, chunks in any order, and drops corrupt ones', async () => {
    const metrics = new Metrics({ run: 'test' });
    const [a, b, c] = chunks(1, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]));
    const corrupt = chunks(2, new Uint8Array([9, 9, 9, 9, 9])).map((record) =>
      record.kind === 'chunk'
        ? { ...record, chunk: { ...record.chunk, data: Buffer.from([0, 0, 0, 0]) } }
        : record,
    );
    // Same length, one byte flipped: only the SHA-256 tells.
    const flipped = chunks(4, new Uint8Array([1, 2, 3, 4, 5])).map((record, i) =>
      record.kind === 'chunk' && i === 0
        ? { ...record, chunk: { ...record.chunk, data: Buffer.from([1, 2, 3, 5]) } }
        : record,
    );
    const records: VersionsRecord[] = [
      c!,
      a!,
      b!,
      { kind: 'policy', policy: policy(1) },
      ...corrupt,
      { kind: 'policy', policy: policy(2) },
      ...chunks(3, new Uint8Array([7])),
      { kind: 'policy', policy: policy(3) },
      ...flipped,
      { kind: 'policy', policy: policy(4) },
    ];

    const out = await lastValueFrom(from(records).pipe(reassembleWeights({ metrics }), toArray()));

    expect(out.map((w) => [w.policy.version, [...w.weights!]])).toEqual([
      [1, [1, 2, 3, 4, 5, 6, 7, 8, 9]],
      [3, [7]],
    ]);
    expect(metrics.snapshot()).toMatchObject({
      'weights.versions': 2,
      'weights.corrupt': 2,
      'weights.incomplete': 0,
    });
  });

  it('gives up the oldest partial version beyond maxPendingVersions', async () => {
    const metrics = new Metrics({ run: 'test' });
    const partial = (version: number) => chunks(version, new Uint8Array(8)).slice(0, 1);
    const records = [...partial(1), ...partial(2), ...partial(3), ...chunks(4, new Uint8Array([4]))];
    records.push({ kind: 'policy', policy: policy(4) });

    const out = await lastValueFrom(
      from(records).pipe(reassembleWeights({ metrics, maxPendingVersions: 2 }), toArray()),
    );

    expect(out.map((w) => w.policy.version)).toEqual([4]);
    expect(metrics.snapshot()['weights.incomplete']).toBe(3);
  });
});
