import { from } from 'rxjs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { KafkaPublisher, kafkaSink } from '../../src/transport/kafka/sink.ts';
import { prompt } from '../fixtures.ts';

// A unit test of the sink's own bookkeeping: the broker is replaced by a send that waits until the test
// acknowledges it (the sink against a real broker is tested in test/kafka/).
describe('kafkaSink encoding ahead of the broker', () => {
  afterEach(() => vi.restoreAllMocks());

  it('encodes at most two request-sized batches ahead of acknowledgements, and delivers every message', async () => {
    const acks: (() => void)[] = [];
    let maxBacklog = 0;
    vi.spyOn(KafkaPublisher.prototype as unknown as { send: () => Promise<void> }, 'send').mockImplementation(
      function (this: KafkaPublisher) {
        maxBacklog = Math.max(maxBacklog, this.backlogBytes);
        return new Promise<void>((resolve) => acks.push(resolve));
      },
    );
    const publish = vi.spyOn(KafkaPublisher.prototype, 'publish');
    const maxBatchBytes = 4_000;
    const prompts = Array.from({ length: 200 }, (_, i) => prompt(`p${i}`, 'x'.repeat(400)));
    const emitted: string[] = [];
    let completed = false;
    from(prompts)
      .pipe(kafkaSink({ connection: { brokers: ['127.0.0.1:9'] }, run: 'r', edge: 'prompts', maxBatchBytes }))
      .subscribe({ next: (p) => emitted.push(p.id), complete: () => (completed = true) });

    const settle = () => new Promise((resolve) => setTimeout(resolve, 20));
    await settle();
    // Nothing acknowledged yet: encoding stopped at the bound instead of running through all 200.
    const encodedBeforeAcks = publish.mock.calls.length;
    expect(encodedBeforeAcks).toBeLessThan(30);
    expect(emitted).toEqual([]);
    while (!completed) {
      acks.shift()?.();
      await settle();
    }
    expect(maxBacklog).toBeLessThanOrEqual(2 * maxBatchBytes + 500);
    expect(publish).toHaveBeenCalledTimes(200);
    expect(emitted).toEqual(prompts.map((p) => p.id));
  });
});
