import { readFileSync, readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { messageSchemas } from '../schemas/index.ts';
import { renderJsonSchemas } from '../src/json-schemas.ts';
import { deadLetter, parseMessage, validateMessage, ValidationError } from '../src/validation.ts';
import { advantaged, groupOf, prompt, scored } from './fixtures.ts';
import { makeGradientBatch, toBatchSample } from '../src/operators/toGradientBatches.ts';

const jsonDir = new URL('../schemas/json/', import.meta.url);

describe('JSON Schemas generated from the zod schemas', () => {
  it('are committed and up to date (run `npm run schemas:generate` if this fails)', () => {
    const rendered = renderJsonSchemas();
    expect(readdirSync(jsonDir).sort()).toEqual(Object.keys(rendered).sort());
    for (const [file, text] of Object.entries(rendered)) {
      expect(readFileSync(new URL(file, jsonDir), 'utf8'), `schemas/json/${file} is stale`).toBe(text);
    }
  });

  it('cover every message and carry the schema version', () => {
    for (const name of Object.keys(messageSchemas)) {
      const json = JSON.parse(readFileSync(new URL(`${name}.schema.json`, jsonDir), 'utf8'));
      expect(json.title).toBe(name);
      if (name !== 'AdvantagedSample' && name !== 'ScoredRollout')
        expect(json.required).toContain('schemaVersion');
    }
  });
});

describe('validation', () => {
  it('accepts well-formed messages of every kind', () => {
    const samples = {
      Prompt: prompt('p1'),
      Rollout: (({ rewards: _r, reward: _t, ...r }) => r)(scored('g', 0, 1)),
      ScoredRollout: scored('g', 0, 1),
      Group: groupOf('g', [1, 0]),
      AdvantagedSample: advantaged('g', 0, 0.5),
      GradientBatch: makeGradientBatch([toBatchSample(advantaged('g', 0, 0.5))]),
      PolicyVersion: { schemaVersion: 1, version: 3, step: 3, time: 1 },
      Metric: {
        schemaVersion: 1,
        run: 'r',
        time: 1,
        name: 'reward/mean',
        kind: 'value',
        value: 0.5,
        step: 2,
      },
      DeadLetter: deadLetter({ source: 'rollouts', reason: 'bad', payload: '{}', time: 1 }),
    } as const;
    for (const [name, value] of Object.entries(samples)) {
      expect(validateMessage(name as keyof typeof samples, value).ok, name).toBe(true);
    }
  });

  it('names the field and the problem', () => {
    const bad = { ...scored('g', 0, 1), behaviourLogProbs: [-0.5, 'x', -0.5], policyVersion: -1 };
    const r = validateMessage('ScoredRollout', bad);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error).toBeInstanceOf(ValidationError);
    expect(r.error.issues).toEqual(
      expect.arrayContaining([
        { path: 'behaviourLogProbs[1]', message: 'expected a finite number, got "x"' },
        { path: 'policyVersion', message: expect.stringMatching(/>=\s?0/) },
      ]),
    );
    expect(r.error.message).toMatch(
      /^Invalid ScoredRollout: .*behaviourLogProbs\[1\]: expected a finite number/,
    );
  });

  it('checks cross-field rules: one log-prob per token, index below group size', () => {
    expect(() =>
      parseMessage('Rollout', {
        ...scored('g', 0, 1),
        rewards: undefined,
        reward: undefined,
        behaviourLogProbs: [],
      }),
    ).toThrow(/behaviourLogProbs: behaviourLogProbs must have one entry per completion token/);
    const { rewards: _r, reward: _t, ...rollout } = scored('g', 3, 1, { groupSize: 2 });
    expect(() => parseMessage('Rollout', rollout)).toThrow(/index: index must be below groupSize/);
  });

  it('rejects unknown schema versions, unknown fields and NaN', () => {
    expect(() => parseMessage('Prompt', { ...prompt('p'), schemaVersion: 2 })).toThrow(/schemaVersion/);
    expect(() => parseMessage('Prompt', { ...prompt('p'), extra: 1 })).toThrow(/Unrecognized key.*extra/);
    expect(() => parseMessage('AdvantagedSample', advantaged('g', 0, Number.NaN))).toThrow(/advantage/);
  });

  it('dead letters keep the original bytes: UTF-8 as text, anything else as base64', () => {
    const text = deadLetter({ source: 's', reason: 'r', payload: new TextEncoder().encode('{"a":1}') });
    expect(text).toMatchObject({ payload: '{"a":1}', encoding: 'utf8' });
    const bytes = new Uint8Array([0xff, 0xfe, 0x00]);
    const binary = deadLetter({ source: 's', reason: 'r', payload: bytes });
    expect(binary.encoding).toBe('base64');
    expect(Buffer.from(binary.payload, 'base64')).toEqual(Buffer.from(bytes));
    const err = new ValidationError('Prompt', [{ path: 'id', message: 'Required' }]);
    expect(deadLetter({ source: 's', reason: err.message, payload: '{}', error: err })).toMatchObject({
      schema: 'Prompt',
      issues: [{ path: 'id', message: 'Required' }],
    });
  });
});
