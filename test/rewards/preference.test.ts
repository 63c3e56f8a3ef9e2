import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { firstValueFrom, from, toArray } from 'rxjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PreferenceRequest, type PreferencePair, type Rollout } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { scoreRollouts } from '../../src/operators/scoreRollouts.ts';
import { selectBackend } from '../../src/policy/backend.ts';
import { httpPreferenceReward, PreferenceScorerError } from '../../src/rewards/preference.ts';
import {
  loadPreferenceModel,
  pairwiseAccuracy,
  preferenceModelReward,
  trainPreferenceModel,
} from '../../src/rewards/preferenceModel.ts';
import { loadPreferencePairs, parsePreferencePairs } from '../../src/rewards/preferencePairs.ts';
import { formatReward, type RewardInput } from '../../src/rewards/rewards.ts';
import { seededUniform, type Uniform } from '../../src/random.ts';
import { prompt, scored } from '../fixtures.ts';

const input = (completion: string): RewardInput => ({
  prompt: prompt('p1', 'What is 2 + 2?'),
  completion,
  completionTokens: 10,
  finishReason: 'eos',
});
const live = () => new AbortController().signal;

/**
 * A real HTTP server on 127.0.0.1:0. Each request is recorded when it arrives (headers; its JSON body
 * once read); `handle` gets the response, the request's number (1, 2, ...) and its body.
 */
interface Scorer {
  url: string;
  requests: { headers: IncomingMessage['headers']; body?: unknown }[];
  close(): Promise<void>;
}
const servers: Scorer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(handle: (res: ServerResponse, n: number, body: unknown) => void): Promise<Scorer> {
  const requests: Scorer['requests'] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const request: Scorer['requests'][number] = { headers: req.headers };
    requests.push(request);
    const n = requests.length;
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (text += chunk));
    req.on('end', () => {
      request.body = JSON.parse(text);
      handle(res, n, request.body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const scorer: Scorer = {
    url: `http://127.0.0.1:${port}/score`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  servers.push(scorer);
  return scorer;
}

const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
};

/** The rejection of `promise` as a PreferenceScorerError. */
async function failure(promise: unknown): Promise<PreferenceScorerError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(PreferenceScorerError);
    return error as PreferenceScorerError;
  }
  throw new Error('expected the scorer to fail');
}

/**
 * The timeout of tests whose server answers: far above any answer time, so that counted requests
 * stay exact on a loaded machine (a 2 s timeout once fired there and the retry made a second
 * request). Timeouts have their own test, with a server that hangs.
 */
const ANSWERED = 60_000;

describe('httpPreferenceReward against a real HTTP server', () => {
  it('POSTs the contract and returns the score', async () => {
    const scorer = await serve((res, _n, body) =>
      json(res, 200, { score: (body as { completion: string }).completion.length / 10, model: 'rm-1' }),
    );
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED, retries: 2, backoffMs: 10 });
    expect(reward.name).toBe('preference');
    await expect(reward.score(input('<answer>4</answer>'), live())).resolves.toBeCloseTo(1.8);
    expect(scorer.requests).toHaveLength(1);
    expect(PreferenceRequest.parse(scorer.requests[0]!.body)).toEqual({
      schemaVersion: 1,
      id: 'p1',
      prompt: 'What is 2 + 2?',
      completion: '<answer>4</answer>',
    });
  });

  it("scores arrive through scoreRollouts; a failure there is a counted null, and so is the rollout's total", async () => {
    const scorer = await serve((res, n) =>
      n === 1 ? json(res, 200, { score: 0.25 }) : json(res, 422, { error: 'unsupported language' }),
    );
    const metrics = new Metrics({ run: 't' });
    const { rewards: _r, reward: _t, ...rollout } = scored('g', 0, null);
    const rollouts: Rollout[] = [rollout, { ...rollout, id: 'g/1', index: 1 }];
    const out = await firstValueFrom(
      from(rollouts).pipe(
        scoreRollouts({
          rewards: [
            { fn: formatReward() },
            { fn: httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED }), weight: 2 },
          ],
          concurrency: 1,
          metrics,
        }),
        toArray(),
      ),
    );
    expect(out.map((s) => [s.rewards.preference, s.reward])).toEqual([
      [0.25, 0.5],
      [null, null],
    ]);
    expect(metrics.snapshot()).toMatchObject({ 'reward.failures{reward=preference,kind=error}': 1 });
  });

  it('retries 503 and 429 with backoff, then succeeds', async () => {
    const scorer = await serve((res, n) => {
      if (n === 1) json(res, 503, { error: 'warming up' });
      else if (n === 2) json(res, 429, { error: 'slow down' }, { 'retry-after': '0' });
      else json(res, 200, { score: -1.5 });
    });
    const retried: string[] = [];
    const reward = httpPreferenceReward({
      url: scorer.url,
      timeoutMs: ANSWERED,
      retries: 2,
      backoffMs: 20,
      onRetry: (f, delay) => retried.push(`${f.attempt}:${f.status}:${delay >= 10 && delay <= 40}`),
    });
    await expect(reward.score(input('x'), live())).resolves.toBe(-1.5);
    expect(scorer.requests).toHaveLength(3);
    expect(retried).toEqual(['1:503:true', '2:429:true']);
  });

  it('gives up after the retries with every attempt in the message', async () => {
    const scorer = await serve((res) => json(res, 502, { error: 'bad gateway' }));
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED, retries: 1, backoffMs: 5 });
    const error = await failure(reward.score(input('x'), live()));
    expect(scorer.requests).toHaveLength(2);
    expect(error.attempts).toBe(2);
    expect(error.message).toBe(
      `preference scorer ${scorer.url}: attempt 2 of 2: HTTP 502 Bad Gateway: "{\\"error\\":\\"bad gateway\\"}"` +
        `; no retries left (earlier: attempt 1: HTTP 502 Bad Gateway: "{\\"error\\":\\"bad gateway\\"}")`,
    );
  });

  it('times out a server that hangs, on every attempt', async () => {
    const scorer = await serve(() => {}); // reads the request, never answers
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: 300, retries: 2, backoffMs: 10 });
    const started = performance.now();
    const error = await failure(reward.score(input('x'), live()));
    const elapsed = performance.now() - started;
    // Not an exact count of the requests the server saw: on a loaded machine an attempt's 300 ms can run
    // out before this process's server has read its request (client and server share one event loop),
    // and CI once saw 2. Three attempts are proven by the client's failures and the time they took.
    expect(scorer.requests.length).toBeGreaterThanOrEqual(1);
    expect(scorer.requests.length).toBeLessThanOrEqual(3);
    expect(error.kind).toBe('timeout');
    expect(error.attempts).toBe(3);
    expect(error.message).toMatch(
      new RegExp(`^preference scorer ${scorer.url}: attempt 3 of 3: timed out after 300 ms; no retries left`),
    );
    expect(error.message).toContain('attempt 1: timed out after 300 ms; attempt 2: timed out after 300 ms');
    expect(error.failures.map((f) => f.kind)).toEqual(['timeout', 'timeout', 'timeout']);
    // Each attempt waited out its 300 ms (a lower bound: timers never fire early by more than rounding).
    expect(elapsed).toBeGreaterThanOrEqual(3 * 300 - 5);
  });

  it('does not retry a 400, and says why', async () => {
    const scorer = await serve((res) => json(res, 400, { error: 'completion too long' }));
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED, retries: 3, backoffMs: 5 });
    const error = await failure(reward.score(input('x'), live()));
    expect(scorer.requests).toHaveLength(1);
    expect(error.kind).toBe('http');
    expect(error.status).toBe(400);
    expect(error.message).toBe(
      `preference scorer ${scorer.url}: attempt 1 of 4: HTTP 400 Bad Request: ` +
        `"{\\"error\\":\\"completion too long\\"}"; not retried (of the error statuses only 429 and 5xx are)`,
    );
  });

  it('a response that fails the schema is an error naming the URL, the field and the status', async () => {
    const scorer = await serve((res, n) => json(res, 200, n === 1 ? { scor: 0.5 } : { score: 'high' }));
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED, retries: 2, backoffMs: 5 });
    const missing = await failure(reward.score(input('x'), live()));
    expect(missing.kind).toBe('invalid_response');
    expect(missing.message).toMatch(
      new RegExp(
        `^preference scorer ${scorer.url}: attempt 1 of 3: invalid response \\(HTTP 200\\): ` +
          'score: Invalid input: expected number, received undefined',
      ),
    );
    const wrongType = await failure(reward.score(input('x'), live()));
    expect(wrongType.message).toMatch(/HTTP 200\): score: Invalid input: expected number, received string/);
    expect(scorer.requests).toHaveLength(2); // neither was retried
  });

  it('a body that is not JSON is an invalid response, with the start of the body', async () => {
    const scorer = await serve((res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>maintenance</html>');
    });
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED });
    const error = await failure(reward.score(input('x'), live()));
    expect(error.message).toMatch(
      /invalid response \(HTTP 200, text\/html\): not JSON \(.*\): "<html>maintenance/,
    );
  });

  it('an already-aborted signal stops at once, before any request', async () => {
    const scorer = await serve((res) => json(res, 200, { score: 1 }));
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED, retries: 2 });
    const controller = new AbortController();
    controller.abort(new Error('preference timed out after 5000 ms'));
    const error = await failure(reward.score(input('x'), controller.signal));
    expect(scorer.requests).toHaveLength(0);
    expect(error.kind).toBe('aborted');
    expect(error.attempts).toBe(0);
    expect(error.message).toBe(
      `preference scorer ${scorer.url}: aborted before attempt 1 of 3 (preference timed out after 5000 ms)`,
    );
  });

  it("the reward's signal firing mid-attempt stops it without a retry", async () => {
    const controller = new AbortController();
    // The request has arrived and waits for its answer when the stage gives up on it.
    const scorer = await serve(() => controller.abort(new Error('preference timed out after 5000 ms')));
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED, retries: 2, backoffMs: 5 });
    const error = await failure(reward.score(input('x'), controller.signal));
    expect(error.kind).toBe('aborted');
    expect(error.attempts).toBe(1);
    expect(error.message).toBe(
      `preference scorer ${scorer.url}: aborted during attempt 1 of 3 (preference timed out after 5000 ms)`,
    );
    expect(scorer.requests).toHaveLength(1);
  });

  it('a refused connection is a network error with its cause, retried', async () => {
    const scorer = await serve(() => {});
    await scorer.close();
    const reward = httpPreferenceReward({ url: scorer.url, timeoutMs: ANSWERED, retries: 1, backoffMs: 5 });
    const error = await failure(reward.score(input('x'), live()));
    expect(error.kind).toBe('network');
    expect(error.attempts).toBe(2);
    expect(error.message).toMatch(/attempt 2 of 2: network error: .*ECONNREFUSED.*; no retries left/);
  });

  it('rejects bad options when built', () => {
    expect(() => httpPreferenceReward({ url: 'not a url' })).toThrow(/url is not a valid URL: "not a url"/);
    expect(() => httpPreferenceReward({ url: 'ftp://x/score' })).toThrow(/must be http: or https:/);
    expect(() => httpPreferenceReward({ url: 'http://x/', retries: -1 })).toThrow(/retries must be/);
    expect(() => httpPreferenceReward({ url: 'http://x/', timeoutMs: 0 })).toThrow(/timeoutMs must be/);
  });

  it('sends user:password@ of the URL as basic authentication, and masks the password in errors', async () => {
    const scorer = await serve((res) => json(res, 401, { error: 'no' }));
    const url = scorer.url.replace('http://', 'http://user:secret@');
    const error = await failure(httpPreferenceReward({ url }).score(input('x'), live()));
    expect(error.message).not.toContain('secret');
    expect(error.message).toContain('user:***@127.0.0.1');
    expect(error.message).toContain('HTTP 401 Unauthorized');
    expect(scorer.requests).toHaveLength(1);
    expect(scorer.requests[0]!.headers.authorization).toBe(
      `Basic ${Buffer.from('user:secret').toString('base64')}`,
    );
  });
});

/** A synthetic preference data set: well-formed R1 answers beat rambling, repetitive or malformed ones. */
function syntheticPairs(count: number, seed: number): PreferencePair[] {
  const u = seededUniform(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(u() * (hi - lo + 1));
  const pick = <T>(items: readonly T[]): T => items[Math.floor(u() * items.length)]!;
  const pairs: PreferencePair[] = [];
  for (let i = 0; i < count; i++) {
    const a = int(10, 99);
    const b = int(10, 99);
    const op = pick(['+', '-', '*'] as const);
    const answer = op === '+' ? a + b : op === '-' ? a - b : a * b;
    const question = `What is ${a} ${op} ${b}?`;
    const reasoning = goodReasoning(u, a, b, op, answer);
    const chosen = `<think>${reasoning}</think> <answer>${answer}</answer>`;
    pairs.push({
      prompt: `User: ${question}. Assistant:`,
      chosen,
      rejected: badCompletion(u, reasoning, answer),
    });
  }
  return pairs;
}

function goodReasoning(u: Uniform, a: number, b: number, op: string, answer: number): string {
  const steps = [
    `We need ${a} ${op} ${b}.`,
    `Take ${a} and apply ${op} with ${b}.`,
    `Split ${b} into ${b - (b % 10)} and ${b % 10}.`,
    `First ${a} ${op} ${b - (b % 10)}, then the ones.`,
    `Check: the result is ${answer}.`,
    `So ${a} ${op} ${b} = ${answer}.`,
  ];
  const n = 1 + Math.floor(u() * 4);
  const start = Math.floor(u() * (steps.length - n + 1));
  return steps.slice(start, start + n).join(' ');
}

function badCompletion(u: Uniform, reasoning: string, answer: number): string {
  const filler = ['hmm', 'wait', 'let me think', 'actually', 'no', 'maybe', 'ok so', 'um'];
  const ramble = () =>
    Array.from({ length: 8 + Math.floor(u() * 20) }, () => filler[Math.floor(u() * filler.length)]!).join(
      ' ',
    );
  const wrong = answer + 1 + Math.floor(u() * 9);
  const kind = Math.floor(u() * 6);
  switch (kind) {
    case 0: // rambling inside the tags
      return `<think>${ramble()}</think> <answer>${u() < 0.5 ? answer : wrong}</answer>`;
    case 1: // one sentence repeated
      return `<think>${Array.from({ length: 3 + Math.floor(u() * 6) }, () => reasoning.split('.')[0]).join('. ')}</think> <answer>${answer}</answer>`;
    case 2: // answer first
      return `<answer>${answer}</answer> <think>${reasoning}</think>`;
    case 3: // never closes its reasoning
      return `<think>${reasoning} ${ramble()}`;
    case 4: // no tags at all
      return u() < 0.5 ? `${reasoning} The answer is ${answer}.` : `${answer}`;
    default: // unclosed answer after rambling
      return `${ramble()} <answer>${wrong}`;
  }
}

describe('preference model (Bradley–Terry on hashed n-grams)', () => {
  beforeAll(async () => {
    await selectBackend('wasm');
  });

  const train = syntheticPairs(240, 1);
  const heldOut = syntheticPairs(200, 2);

  it('learns to prefer well-formed answers: held-out accuracy > 0.8, well above untrained', async () => {
    const shape = { hiddenUnits: 16, features: { hashDim: 512 } };
    const untrained = await trainPreferenceModel(train, { ...shape, epochs: 0 });
    const started = performance.now();
    const epochs: number[] = [];
    const model = await trainPreferenceModel(train, {
      ...shape,
      epochs: 5,
      batchSize: 32,
      seed: 3,
      onEpoch: (s) => epochs.push(s.loss),
    });
    const seconds = (performance.now() - started) / 1000;
    const before = pairwiseAccuracy(untrained, heldOut);
    const after = pairwiseAccuracy(model, heldOut);
    console.log(
      `preference model: held-out accuracy ${before.toFixed(3)} untrained -> ${after.toFixed(3)} ` +
        `after ${epochs.length} epochs (loss ${epochs[0]!.toFixed(3)} -> ${epochs.at(-1)!.toFixed(3)}) ` +
        `in ${seconds.toFixed(2)} s`,
    );
    expect(before).toBe(0.5); // zero output weights: every completion scores r = 0
    expect(after).toBeGreaterThan(0.8);
    expect(after - before).toBeGreaterThan(0.25);
    expect(epochs.at(-1)!).toBeLessThan(epochs[0]!);

    const reward = preferenceModelReward(model);
    const pair = heldOut[0]!;
    const score = (completion: string) =>
      reward.score({ ...input(completion), prompt: { ...prompt('q'), text: pair.prompt } }, live()) as number;
    expect(score(pair.chosen)).toBeGreaterThan(0);
    expect(score(pair.chosen)).toBeLessThan(1);
    expect(score(pair.chosen)).toBeGreaterThan(score(pair.rejected));

    const dir = await mkdtemp(path.join(tmpdir(), 'rxrl-preference-'));
    try {
      await model.save(dir);
      const loaded = await loadPreferenceModel(dir);
      expect(loaded.config).toEqual(model.config);
      for (const p of heldOut.slice(0, 50)) {
        expect(loaded.reward(p.prompt, p.chosen)).toBe(model.reward(p.prompt, p.chosen));
        expect(loaded.reward(p.prompt, p.rejected)).toBe(model.reward(p.prompt, p.rejected));
      }
      expect(loaded.metadata).toMatchObject({ trainedOn: 240, epochs: 5 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a linear scorer trains too, and training is a pure function of the seed', async () => {
    const options = { hiddenUnits: 0, epochs: 4, seed: 5, features: { hashDim: 256 } };
    const a = await trainPreferenceModel(train.slice(0, 160), options);
    const b = await trainPreferenceModel(train.slice(0, 160), options);
    expect(a.weights.w1).toBeUndefined();
    expect(a.weights.w2).toHaveLength(256 + 7);
    expect(pairwiseAccuracy(a, heldOut)).toBeGreaterThan(0.8);
    expect(b.weights.w2).toEqual(a.weights.w2);
  });

  it('loading a damaged model names the file and the problem', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'rxrl-preference-'));
    try {
      await expect(loadPreferenceModel(dir)).rejects.toThrow(/cannot read .*manifest\.json/);
      const model = await trainPreferenceModel([], { epochs: 0, hiddenUnits: 4, features: { hashDim: 8 } });
      await model.save(dir);
      await writeFile(path.join(dir, 'weights.bin'), Buffer.alloc(8));
      await expect(loadPreferenceModel(dir)).rejects.toThrow(
        /weights\.bin is truncated \(w1 ends past its end\)/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('preference pairs (JSONL)', () => {
  it('reads pairs and reports every bad line as file:line: reason', () => {
    const text = [
      '{"prompt": "2+2?", "chosen": "<think>2+2=4</think> <answer>4</answer>", "rejected": "5"}',
      '',
      '{"prompt": "3+3?", "chosen": "6", "rejected": "6"}',
      '{"prompt": "4+4?", "choosen": "8", "rejected": "9"}',
      '{"prompt": "5+5?", "chosen": 10, "rejected": "11"}',
      'not json',
      '{"id": "a", "prompt": "1+1?", "chosen": "2", "rejected": "3"}',
      '{"id": "a", "prompt": "1+2?", "chosen": "3", "rejected": "4"}',
    ].join('\n');
    expect(() => parsePreferencePairs(text, 'prefs.jsonl')).toThrow(/^5 bad line\(s\) in prefs\.jsonl:/);
    try {
      parsePreferencePairs(text, 'prefs.jsonl');
    } catch (error) {
      const lines = (error as AggregateError).message.split('\n').slice(1);
      expect(lines).toEqual([
        'prefs.jsonl:3: chosen and rejected are the same completion',
        expect.stringMatching(/^prefs\.jsonl:4: (chosen: .*expected string, received undefined; )?.*choosen/),
        'prefs.jsonl:5: chosen: Invalid input: expected string, received number',
        expect.stringMatching(/^prefs\.jsonl:6: not valid JSON \(/),
        'prefs.jsonl:8: duplicate id "a"',
      ]);
    }
    const good = parsePreferencePairs(text.split('\n').slice(0, 2).join('\n'), 'prefs.jsonl');
    expect(good).toEqual([
      { prompt: '2+2?', chosen: '<think>2+2=4</think> <answer>4</answer>', rejected: '5' },
    ]);
  });

  it('loads a file and names it in errors', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'rxrl-pairs-'));
    try {
      const file = path.join(dir, 'pairs.jsonl');
      await writeFile(file, '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p"}\n');
      expect(() => loadPreferencePairs(file)).toThrow(`${file}:2: chosen: Invalid input: expected string`);
      await writeFile(file, '{"prompt": "p", "chosen": "a", "rejected": "b"}\n');
      expect(loadPreferencePairs(file)).toHaveLength(1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
