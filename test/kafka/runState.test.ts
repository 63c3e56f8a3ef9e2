/**
 * The parts a run over Kafka builds on: weights as bytes, the learner's consumed positions, prompt metadata,
 * and (against the broker) a source starting from given offsets, as a resuming learner's does.
 */
import { from, lastValueFrom, take, tap, toArray } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import { SCHEMA_VERSION } from '../../schemas/index.ts';
import { readTopicSince } from '../../src/run/kafka/common.ts';
import { kafkaSink } from '../../src/transport/kafka/sink.ts';
import { kafkaSource } from '../../src/transport/kafka/source.ts';
import { topicName } from '../../src/transport/kafka/topics.ts';
import { connection, createRun, deleteRuns, prompt, unique } from './helpers.ts';
import { minPolicyVersion } from '../../src/run/kafka/rollout.ts';
import { promptCursorOf } from '../../src/run/kafka/learner.ts';
import { ConsumedPositions } from '../../src/run/kafka/positions.ts';
import { decodeWeights, encodeWeights } from '../../src/run/kafka/weights.ts';

describe('policy weights as bytes', () => {
  it('round-trips named float32 arrays of any length, and says what is wrong with bad bytes', () => {
    const weights = {
      'wte.weight': Float32Array.from([1.5, -2, 3.25]),
      'é/odd name': new Float32Array(0),
      bias: Float32Array.from([Number.MAX_VALUE, -0, 1e-30, 7]),
    };
    const bytes = encodeWeights(weights);
    const decoded = decodeWeights(bytes);
    expect(Object.keys(decoded)).toEqual(Object.keys(weights));
    for (const [name, values] of Object.entries(weights)) {
      expect(Array.from(decoded[name]!)).toEqual(Array.from(values));
    }
    // An unaligned copy decodes the same (Kafka hands out buffers at any offset).
    const shifted = new Uint8Array(bytes.byteLength + 1).subarray(1);
    shifted.set(bytes);
    expect(Array.from(decodeWeights(shifted)['bias']!)).toEqual(Array.from(weights.bias));

    expect(() => decodeWeights(bytes.subarray(0, bytes.byteLength - 4))).toThrow(
      /lists 7 values but 6 follow/,
    );
    expect(() => decodeWeights(new Uint8Array(2))).toThrow(/too short/);
    const garbage = Uint8Array.from([4, 0, 0, 0, 0x7b, 0x7b, 0x7b, 0x7b]);
    expect(() => decodeWeights(garbage)).toThrow(/header is not JSON/);
  });
});

describe('ConsumedPositions', () => {
  it('restarts each partition at its lowest undecided offset and names the groups decided past it', () => {
    const positions = new ConsumedPositions({ 0: 10, 2: 7 });
    expect(positions.positions()).toEqual({ 0: 10, 2: 7 });
    positions.delivered(0, 10); // a
    positions.delivered(0, 11); // b
    positions.delivered(0, 12); // a
    positions.delivered(0, 13); // c
    positions.delivered(1, 0); // d
    positions.settled(0, 10, 'a');
    positions.settled(0, 12, 'a');
    positions.settled(0, 13, 'c');
    positions.settled(1, 0, 'd');
    expect(positions.positions()).toEqual({ 0: 11, 1: 1, 2: 7 });
    expect(positions.settledPast()).toEqual(new Set(['a', 'c']));
    expect(positions.open).toBe(1);

    positions.settled(0, 11, 'b');
    expect(positions.positions()).toEqual({ 0: 14, 1: 1, 2: 7 });
    expect(positions.settledPast()).toEqual(new Set());
    // A record read again (a restart, a rebalance) is open again until it is settled again.
    positions.delivered(1, 0);
    expect(positions.positions()[1]).toBe(0);
    positions.settled(1, 0, 'd');
    expect(positions.positions()[1]).toBe(1);
  });
});

describe('prompt metadata of a run over Kafka', () => {
  const prompt = (meta?: Record<string, unknown>) => ({
    schemaVersion: SCHEMA_VERSION,
    id: 'p',
    task: 'arithmetic',
    text: '1+1',
    ...(meta ? { meta } : {}),
  });

  it('reads the cursor and the oldest policy version a prompt may be sampled with', () => {
    expect(minPolicyVersion(prompt({ minPolicyVersion: 4 }))).toBe(4);
    expect(minPolicyVersion(prompt())).toBe(0);
    expect(minPolicyVersion(prompt({ minPolicyVersion: 'x' }))).toBe(0);
    expect(promptCursorOf(prompt({ cursor: 12 }))).toBe(12);
    expect(promptCursorOf(prompt({ cursor: -1 }))).toBeUndefined();
    expect(promptCursorOf(prompt())).toBeUndefined();
  });
});

describe('kafkaSource startOffsets', () => {
  afterAll(deleteRuns);

  it("starts each partition at the given offset, over the group's committed one, once", async () => {
    const run = await createRun('start-offsets', 1);
    const ids = Array.from({ length: 10 }, (_, i) => `p${i}`);
    await lastValueFrom(
      from(ids.map(prompt)).pipe(kafkaSink({ connection, run, edge: 'prompts' }), toArray()),
    );
    const groupId = unique('resume');
    const read = (n: number, startOffsets?: ReadonlyMap<number, number>) =>
      lastValueFrom(
        kafkaSource({
          connection,
          run,
          edge: 'prompts',
          groupId,
          ...(startOffsets ? { startOffsets } : {}),
        }).pipe(
          tap((d) => d.ack()),
          take(n),
          toArray(),
        ),
      );
    // A fresh group: from the given offset, not the beginning.
    expect((await read(2, new Map([[0, 6]]))).map((d) => d.value.id)).toEqual(['p6', 'p7']);
    // The group committed 8; the given offset wins, backwards too.
    expect((await read(3, new Map([[0, 3]]))).map((d) => d.value.id)).toEqual(['p3', 'p4', 'p5']);
    // Without one: the committed offset.
    expect((await read(1)).map((d) => d.value.id)).toEqual(['p6']);

    const tail = await readTopicSince(connection, topicName(run, 'prompts'), { 0: 7 });
    expect(tail.map((m) => JSON.parse(m.value!.toString()).id)).toEqual(['p7', 'p8', 'p9']);
    expect(await readTopicSince(connection, topicName(run, 'prompts'), { 0: 10 })).toEqual([]);
  });
});
