import { z } from 'zod';

/** Every message carries the version of its schema; a reader rejects versions it does not know. */
export const SCHEMA_VERSION = 1 as const;
export const SchemaVersion = z.literal(SCHEMA_VERSION).describe('Version of this message schema.');

/** Token ids are non-negative integers. */
export const TokenIds = z.array(z.int().nonnegative());

/** A reward value; null when the reward function failed or does not apply (TRL's None / NaN). */
export const RewardValue = z.number().nullable();
