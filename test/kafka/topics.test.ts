/** The versions topic's retention against a real broker: set keeping the topic's own settings, or left to the operator. */
import { Kafka, logLevel, ConfigResourceTypes } from 'kafkajs';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import {
  createRunTopics,
  deleteRunTopics,
  limitVersionsTopic,
  topicName,
  versionsRetention,
} from '../../src/transport/kafka/topics.ts';
import { connection, unique } from './helpers.ts';

const admin = new Kafka({ ...connection, logLevel: logLevel.NOTHING }).admin();
beforeAll(() => admin.connect());
const run = unique('retention');
afterAll(async () => {
  await deleteRunTopics(connection, run).catch(() => undefined);
  await admin.disconnect();
});

/** The versions topic's own settings (not defaults). */
async function ownSettings(run: string): Promise<Record<string, string>> {
  const { resources } = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topicName(run, 'versions') }],
  });
  return Object.fromEntries(
    resources[0]!.configEntries.filter((e) => !e.isDefault).map((e) => [e.configName, e.configValue]),
  );
}

it("limits the versions topic's retention and keeps its other settings; a retention.bytes of its own stays", async () => {
  await createRunTopics(connection, run, { retentionMs: 3_600_000 });
  const bytes = 5 * 1024 * 1024;
  expect(await limitVersionsTopic(admin, run, bytes)).toBe(true);
  const limits = Object.fromEntries(versionsRetention(bytes).map((e) => [e.name, e.value]));
  // alterConfigs replaces what it does not name: retention.ms, set at creation, is still there.
  // (The broker applies a config change a moment after it answers.)
  const settled = (expected: Record<string, string>) =>
    vi.waitFor(async () => expect(await ownSettings(run)).toMatchObject(expected), { timeout: 15_000 });
  await settled({ ...limits, 'retention.ms': '3600000' });

  // An operator's retention.bytes is theirs: nothing changes.
  await admin.alterConfigs({
    validateOnly: false,
    resources: [
      {
        type: ConfigResourceTypes.TOPIC,
        name: topicName(run, 'versions'),
        configEntries: [{ name: 'retention.bytes', value: '123456789' }],
      },
    ],
  });
  await settled({ 'retention.bytes': '123456789' });
  expect(await limitVersionsTopic(admin, run, bytes)).toBe(false);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  expect((await ownSettings(run))['retention.bytes']).toBe('123456789');
});
