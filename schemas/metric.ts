import { z } from 'zod';
import { SchemaVersion } from './common.ts';

export const MetricKind = z.enum(['counter', 'gauge', 'value']);

/** One observation on a run's metrics stream. Counters are cumulative totals. */
export const Metric = z
  .object({
    schemaVersion: SchemaVersion,
    run: z.string().min(1),
    time: z.number().describe('Milliseconds since the Unix epoch (or scheduler time in tests).'),
    name: z.string().min(1).describe('Dotted name, e.g. "reward/mean", "drops.stale".'),
    kind: MetricKind,
    value: z.number(),
    step: z.int().nonnegative().optional(),
    labels: z.record(z.string(), z.string()).optional(),
  })
  .strict();
export type Metric = z.infer<typeof Metric>;
